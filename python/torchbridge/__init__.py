from torchbridge import _C  # noqa
