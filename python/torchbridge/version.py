"""The installed package's version (what manifests and reports record)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("torchbridge")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"
