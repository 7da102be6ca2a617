"""Models for the digits data: a small CNN, an MLP, and torchvision classifiers by name."""

from __future__ import annotations

import torch
from torch import nn

from torchbridge.errors import TorchbridgeError


class DigitsCNN(nn.Module):
    """Two conv blocks and a classifier for (N, 1, 8, 8) digits: about 85k parameters at width 32."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsMLP(nn.Module):
    """A three-layer perceptron over the 64 pixels."""

    def __init__(self, num_classes: int = 10, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsLSTM(nn.Module):
    """Reads a (N, 1, 8, 8) digit as a sequence of 8 rows of 8 pixels: LSTM, then a classifier
    on the last step. The recurrent model of the set (dynamic int8 quantization targets it)."""

    def __init__(self, num_classes: int = 10, hidden: int = 64, num_layers: int = 1):
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, num_layers=num_layers, batch_first=True)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.flatten(1, 2)  # (N, 1, 8, 8) -> (N, 8 rows, 8 pixels)
        sequence, _ = self.lstm(rows)
        return self.classifier(sequence[:, -1])


def digits_cnn(num_classes: int = 10) -> DigitsCNN:
    return DigitsCNN(num_classes)


def digits_mlp(num_classes: int = 10) -> DigitsMLP:
    return DigitsMLP(num_classes)


def digits_lstm(num_classes: int = 10) -> DigitsLSTM:
    return DigitsLSTM(num_classes)


def _adapt_torchvision(model: nn.Module, in_channels: int) -> nn.Module:
    """Make an ImageNet architecture fit small single-channel images (8x8 digits).

    ResNets get a 3x3 stride-1 stem without max-pooling (the CIFAR recipe); other families get
    their first convolution's input channels changed. Weights are random: nothing is downloaded.
    """
    if hasattr(model, "conv1") and hasattr(model, "maxpool"):  # ResNet family
        model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        return model
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            replacement = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                stride=1,  # keep resolution on 8x8 inputs
                padding=module.padding,
                bias=module.bias is not None,
            )
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], replacement)
            return model
    raise TorchbridgeError(f"cannot adapt {type(model).__name__}: no Conv2d found")


def torchvision_model(
    name: str, num_classes: int = 10, in_channels: int | None = 1, quantizable: bool = False
) -> nn.Module:
    """A torchvision classifier by name ('resnet18', 'mobilenet_v2', ...) with random weights.

    With in_channels=None the model keeps its ImageNet stem (3 channels, any image size);
    otherwise its stem is adapted to small images with `in_channels` channels.
    quantizable=True takes the variant from torchvision.models.quantization (QuantStub/DeQuantStub,
    FloatFunctional skip additions, fuse_model), still float, which static and QAT int8 need.
    """
    try:
        import torchvision
    except Exception as error:  # ImportError, or an operator mismatch against this torch
        raise TorchbridgeError(
            f"torchvision model '{name}' needs torchvision matching torch {torch.__version__} "
            f"(pip install torchvision==0.29.1 for torch 2.14.1): {error}"
        ) from error
    if quantizable:
        available = torchvision.models.list_models(module=torchvision.models.quantization)
        if f"quantized_{name}" not in available:
            names = ", ".join(n.removeprefix("quantized_") for n in available)
            raise TorchbridgeError(f"torchvision has no quantizable '{name}' (quantizable: {names})")
        model = torchvision.models.get_model(f"quantized_{name}", weights=None, quantize=False, num_classes=num_classes)
        return model if in_channels is None else _adapt_torchvision(model, in_channels)
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise TorchbridgeError(f"unknown torchvision model '{name}' (e.g. resnet18, mobilenet_v2, efficientnet_b0)")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return model if in_channels is None else _adapt_torchvision(model, in_channels)


BUILTIN = {"digits_cnn": digits_cnn, "digits_mlp": digits_mlp, "digits_lstm": digits_lstm}


def create(name: str, num_classes: int = 10, quantizable: bool = False) -> nn.Module:
    """A model for the digits data by name: 'digits_cnn', 'digits_mlp', 'digits_lstm' or a
    torchvision name; quantizable=True picks torchvision's quantizable variant (built-ins need none)."""
    if name in BUILTIN:
        return BUILTIN[name](num_classes)
    return torchvision_model(name, num_classes=num_classes, in_channels=1, quantizable=quantizable)
