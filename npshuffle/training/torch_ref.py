"""PyTorch reference graphs: the oracle for parity tests, and the models the trainer trains.

Only :mod:`npshuffle.training` imports torch (an optional extra: ``pip install .[test]``).
Each class reproduces a published code base's ``state_dict`` keys exactly, so its real checkpoints
load with ``strict=True``:

=====================  ==============================================================================
``TorchvisionV2``      ``torchvision.models.shufflenet_v2_x*``: conv1, stage2-4, conv5, fc
``TorchvisionV1``      the paper's V1 in torchvision's style (torchvision has no V1): conv1, stage2-4, fc
``MegviiV1``           megvii-model/ShuffleNet-Series ShuffleNetV1: first_conv, features, classifier
``MegviiV2``           megvii-model/ShuffleNet-Series ShuffleNetV2: first_conv, features, conv_last, classifier
=====================  ==============================================================================

One deliberate difference: Megvii's networks pool with ``AvgPool2d(7)``, which equals the global
mean only for 224x224 inputs; these classes take the global mean, so any input size works.
"""

from __future__ import annotations

import torch
from torch import nn

from ..archs import V1Spec, V2Spec, check_spec, unit_layout


def shuffle_torchvision(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The paper's shuffle: (n, g, c/g, h, w) -> transpose(1, 2) -> flatten."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def shuffle_megvii(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet-Series V1's shuffle: (n, c/g, g, h, w) -> permute(0, 2, 1, 3, 4) -> flatten."""
    n, c, h, w = x.shape
    return x.reshape(n, c // groups, groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def _conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, relu: bool = True):
    layers = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


def _stem(cout: int) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(3, cout, 3, 2))


def _add_stages(model: nn.Module, spec, make_unit) -> list[str]:
    """torchvision style: attach ``stage2``, ``stage3``, ... (nn.Sequential of units) to ``model``.

    ``make_unit(unit index, cin, cout, stride)`` builds one unit; returns the stage names in order.
    """
    stages: list[list[nn.Module]] = [[] for _ in spec.stage_channels]
    for index, stage, cin, cout, stride in unit_layout(spec):
        stages[stage].append(make_unit(index, cin, cout, stride))
    names = [f"stage{i + 2}" for i in range(len(stages))]
    for name, units in zip(names, stages, strict=True):
        setattr(model, name, nn.Sequential(*units))
    return names


# --------------------------------------------------------------------------------------------------
# torchvision dialect


class TorchvisionV2Unit(nn.Module):
    """torchvision's ``InvertedResidual`` (same attribute names: branch1, branch2)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 2:
            self.branch1 = nn.Sequential(
                *_conv_bn(cin, cin, 3, 2, groups=cin, relu=False), *_conv_bn(cin, half)
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            *_conv_bn(cin if stride == 2 else half, half),
            *_conv_bn(half, half, 3, stride, groups=half, relu=False),
            *_conv_bn(half, half),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return shuffle_torchvision(out, 2)


class TorchvisionV2(nn.Module):
    """torchvision's ShuffleNetV2 (keys conv1.*, stage2.*, ..., conv5.*, fc.*)."""

    def __init__(self, spec: V2Spec):
        super().__init__()
        check_spec(spec)
        self.conv1 = _stem(spec.stem_channels)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stage_names = _add_stages(self, spec, lambda i, cin, cout, stride: TorchvisionV2Unit(cin, cout, stride))
        self.conv5 = nn.Sequential(*_conv_bn(spec.stage_channels[-1], spec.head_channels))
        self.fc = nn.Linear(spec.head_channels, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(self.conv5(x).mean([2, 3]))


class TorchvisionV1Unit(nn.Module):
    """The paper's V1 unit: ``branch`` = 1x1 gconv, BN, ReLU, shuffle, 3x3 dw, BN, 1x1 gconv, BN."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first: bool):
        super().__init__()
        self.stride = stride
        mid = cout // 4
        branch_out = cout - cin if stride == 2 else cout
        self.branch = nn.Sequential(
            *_conv_bn(cin, mid, groups=1 if first else groups),
            nn.ChannelShuffle(groups) if groups > 1 else nn.Identity(),
            *_conv_bn(mid, mid, 3, stride, groups=mid, relu=False),
            *_conv_bn(mid, branch_out, groups=groups, relu=False),
        )
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        if self.stride == 1:
            return torch.relu(x + y)
        return torch.cat((self.shortcut(x), torch.relu(y)), dim=1)


class TorchvisionV1(nn.Module):
    """ShuffleNet V1 with torchvision-style names (keys conv1.*, stage2.*, ..., fc.*)."""

    def __init__(self, spec: V1Spec):
        super().__init__()
        check_spec(spec)
        self.conv1 = _stem(spec.stem_channels)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stage_names = _add_stages(
            self, spec, lambda i, cin, cout, stride: TorchvisionV1Unit(cin, cout, stride, spec.groups, first=i == 0)
        )
        self.fc = nn.Linear(spec.stage_channels[-1], spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(x.mean([2, 3]))


# --------------------------------------------------------------------------------------------------
# megvii dialect (ShuffleNet-Series)


class MegviiV1Unit(nn.Module):
    """ShuffleNet-Series ``ShuffleV1Block``: note the shuffle comes *after* the depthwise conv."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first: bool):
        super().__init__()
        self.stride, self.groups = stride, groups
        mid = cout // 4
        branch_out = cout - cin if stride == 2 else cout
        self.branch_main_1 = nn.Sequential(
            *_conv_bn(cin, mid, groups=1 if first else groups),
            *_conv_bn(mid, mid, 3, stride, groups=mid, relu=False),
        )
        self.branch_main_2 = nn.Sequential(*_conv_bn(mid, branch_out, groups=groups, relu=False))
        if stride == 2:
            self.branch_proj = nn.AvgPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch_main_1(x)
        if self.groups > 1:
            y = shuffle_megvii(y, self.groups)
        y = self.branch_main_2(y)
        if self.stride == 1:
            return torch.relu(y + x)
        return torch.cat((self.branch_proj(x), torch.relu(y)), dim=1)


class MegviiV1(nn.Module):
    """ShuffleNet-Series ``ShuffleNetV1`` (keys first_conv.*, features.N.*, classifier.0.weight)."""

    def __init__(self, spec: V1Spec):
        super().__init__()
        check_spec(spec)
        self.first_conv = _stem(spec.stem_channels)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.features = nn.Sequential(*(
            MegviiV1Unit(cin, cout, stride, spec.groups, first=i == 0) for i, _, cin, cout, stride in unit_layout(spec)
        ))
        self.classifier = nn.Sequential(nn.Linear(spec.stage_channels[-1], spec.num_classes, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.maxpool(self.first_conv(x)))
        return self.classifier(x.mean([2, 3]))


class MegviiV2Unit(nn.Module):
    """ShuffleNet-Series ``ShuffleV2Block``: split = even/odd channels, no shuffle at the end."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        inp = cin if stride == 2 else cout // 2
        mid = cout // 2
        self.branch_main = nn.Sequential(
            *_conv_bn(inp, mid),
            *_conv_bn(mid, mid, 3, stride, groups=mid, relu=False),
            *_conv_bn(mid, cout - inp),
        )
        if stride == 2:
            self.branch_proj = nn.Sequential(
                *_conv_bn(cin, cin, 3, 2, groups=cin, relu=False), *_conv_bn(cin, cin)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x_proj, x_main = x[:, 0::2], x[:, 1::2]
            return torch.cat((x_proj, self.branch_main(x_main)), dim=1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), dim=1)


class MegviiV2(nn.Module):
    """ShuffleNet-Series ``ShuffleNetV2`` (keys first_conv.*, features.N.*, conv_last.*, classifier.0.weight)."""

    def __init__(self, spec: V2Spec):
        super().__init__()
        check_spec(spec)
        self.first_conv = _stem(spec.stem_channels)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.features = nn.Sequential(
            *(MegviiV2Unit(cin, cout, stride) for _, _, cin, cout, stride in unit_layout(spec))
        )
        self.conv_last = nn.Sequential(*_conv_bn(spec.stage_channels[-1], spec.head_channels))
        self.classifier = nn.Sequential(nn.Linear(spec.head_channels, spec.num_classes, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.maxpool(self.first_conv(x)))
        return self.classifier(self.conv_last(x).mean([2, 3]))


def build_torch_model(spec: V1Spec | V2Spec, dialect: str = "torchvision") -> nn.Module:
    """The torch reference network for ``spec`` in ``dialect`` ("torchvision" or "megvii")."""
    classes = {
        (1, "torchvision"): TorchvisionV1,
        (2, "torchvision"): TorchvisionV2,
        (1, "megvii"): MegviiV1,
        (2, "megvii"): MegviiV2,
    }
    try:
        cls = classes[(spec.version, dialect)]
    except KeyError:
        raise ValueError(f"unknown dialect {dialect!r}: use 'torchvision' or 'megvii'") from None
    return cls(spec)


def randomize_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every weight and every BN statistic random values (for parity tests).

    BN running variances and scales are kept in a sane range so activations neither vanish nor
    explode through 20 layers: the point is that *every* folded term is exercised, not realism.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(torch.rand(c, generator=generator) * 0.8 + 0.6)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / module.in_features**0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.out_features, generator=generator) * 0.1)
    return model.eval()
