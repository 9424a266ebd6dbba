"""ResNet-18 in plain torch, torchvision's architecture and names, with seeded random weights.

Why: a latency benchmark needs the ResNet-18 *shape* (the 3x3-conv-heavy counterpart of
MobileNetV2's depthwise/pointwise mix), and torchvision does not import beside torch 2.13. The
module tree copies torchvision's ``resnet18`` exactly (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``, ...), so torchvision's checkpoint would load with
``strict=True`` if one were available offline; none is, so ``load_resnet18`` builds the network
with **random weights from a fixed seed**. It is not a classifier: use it for latency, and for
quantization error only relative to its own float output.

Weights follow torchvision's initialisation (Kaiming-normal convolutions, fan-out, ReLU gain;
the ``fc`` layer as ``nn.Linear`` does). Batch-norm statistics are made realistic by
re-estimating them (``momentum=None``, i.e. a plain average) from the network's own activations
on seeded random-normal images, as one would recalibrate BN after pruning; gamma and beta get a
little seeded spread around 1 and 0. Every activation therefore has a per-channel scale of about
one through all eight residual blocks, as in a trained network, instead of growing or vanishing.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResNet18", "BasicBlock", "load_resnet18"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN (ReLU between), a skip (1x1 conv-BN where the shape changes), ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:  # fixed at construction: not data-dependent
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 (torchvision's ``resnet18``): input NCHW float32, any size >= 32 (224 nominal)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, planes in enumerate((64, 128, 256, 512), 1):
            stride = 1 if i == 1 else 2
            layer = nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes))
            setattr(self, f"layer{i}", layer)
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@torch.no_grad()
def load_resnet18(seed: int = 0, bn_images: int = 16, image_size: int = 224) -> ResNet18:
    """ResNet-18 with seeded random weights and re-estimated BN statistics, in eval mode.

    Deterministic for a given ``seed`` (and torch version): the same weights on every call.
    ``bn_images`` random-normal images of ``image_size`` (in batches of 8) set the BN statistics.
    """
    gen = torch.Generator().manual_seed(seed)
    model = ResNet18()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu")
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(1.0 + 0.1 * torch.randn(m.num_features, generator=gen))
            m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
        elif isinstance(m, nn.Linear):
            bound = 1.0 / m.in_features**0.5
            m.weight.copy_((torch.rand(m.weight.shape, generator=gen) * 2 - 1) * bound)
            m.bias.copy_((torch.rand(m.bias.shape, generator=gen) * 2 - 1) * bound)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.train()
    for start in range(0, bn_images, 8):
        n = min(8, bn_images - start)
        model(torch.randn((n, 3, image_size, image_size), generator=gen))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()
