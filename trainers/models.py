"""Model zoo for raylars: builds every network the trainers can train, with its initialisation.

This module owns the architectures (ResNet-50, AlexNet, AlexNet-BN and a small CPU-demo
ResNet) and the weight-initialisation rules of Jia et al. 2018 ("ImageNet in four minutes"):
He init for convolutions, the last BatchNorm gamma of each residual block set to zero, and a
final classifier drawn from N(0, 0.01) with zero bias. It does not own optimisers, mixed
precision or data: trainers call :func:`build_model` and get a plain fp32 ``nn.Module``.

Every other torchvision classification architecture (`resnet18`, `efficientnet_b0`,
`convnext_tiny`, `vit_b_16`, ...) is registered under its torchvision name, built without
weights (nothing is ever downloaded), with the data's classes and input channels; the
ResNet family (ResNet, ResNeXt, Wide ResNet) gets the paper's initialisation above, the
others keep torchvision's own. :func:`check_input_size` tells before any run whether an
architecture accepts the data's image size.
"""

from __future__ import annotations

import operator

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from common.registry import Registry

# name -> builder(num_classes=, in_channels=) of an initialised fp32 nn.Module.
MODELS = Registry("model", key="model.name")

# Std of the final classifier's weights: small, so the initial logits are near zero and the
# first steps start from an almost uniform softmax (as in the paper's recipe).
FINAL_FC_STD = 0.01


def build_model(*, name: str, num_classes: int, in_channels: int = 3,
                image_size: int | None = None) -> nn.Module:
    """Build and initialise the network ``name`` with a ``num_classes``-way classifier.

    ``image_size``: the side of the inputs, for the architectures whose layers depend on it
    (torchvision's ViT and MaxViT); the others ignore it (None: their default, 224).
    """
    builder = MODELS.get(name).builder
    sizes = {"num_classes": _checked_int(num_classes, "num_classes", minimum=2),
             "in_channels": _checked_int(in_channels, "in_channels", minimum=1)}
    if image_size is not None and name in SIZED_MODELS:
        sizes["image_size"] = _checked_int(image_size, "image_size", minimum=1)
    return builder(**sizes)


def _checked_int(value: object, what: str, *, minimum: int) -> int:
    # operator.index accepts numpy/torch integers (e.g. from a Hydra config or a dataset) but
    # rejects floats, which would otherwise silently build a wrong layer size.
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or number < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return number


def final_layer(model: nn.Module) -> nn.Linear:
    """The Linear layer producing the logits (the one initialised from N(0, 0.01))."""
    if isinstance(model, AlexNet):
        return model.classifier[-1]
    return model.fc


def init_weights(model: nn.Module) -> None:
    """Apply the paper's initialisation to ``model`` in place (all built models use it)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            # Hidden FC layers (AlexNet) feed ReLUs with no BN in between, so He fan_in keeps
            # the forward activation variance; N(0, 0.01) there would shrink it ~2x per layer.
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    fc = final_layer(model)
    nn.init.normal_(fc.weight, mean=0.0, std=FINAL_FC_STD)
    nn.init.zeros_(fc.bias)
    # Zero gamma on each residual branch's last BN makes every block start as the identity,
    # which is what keeps very large-batch training stable in the first epochs.
    for module in model.modules():
        if isinstance(module, Bottleneck):
            nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)


def resnet50(*, num_classes: int, in_channels: int = 3) -> nn.Module:
    """torchvision ResNet-50 (no pretrained weights), optionally with a non-RGB stem."""
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    init_weights(model)
    return model


class SmallResNet(nn.Module):
    """CIFAR-style ResNet for 32x32 inputs, cheap enough for the CPU demo (~12.5 MMACs/image).

    3x3 stem (16 ch), three stages of BasicBlocks (16/32/64 ch, strides 1/2/2), global average
    pooling and a linear classifier. ``blocks_per_stage`` deepens every stage equally.
    """

    def __init__(self, *, num_classes: int, in_channels: int = 3, blocks_per_stage: int = 1):
        super().__init__()
        blocks_per_stage = _checked_int(blocks_per_stage, "blocks_per_stage", minimum=1)
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, width = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(_basic_stage(width, planes, stride, blocks_per_stage))
            width = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _basic_stage(inplanes: int, planes: int, stride: int, blocks: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes),
        )
    layers = [BasicBlock(inplanes, planes, stride=stride, downsample=downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class AlexNet(nn.Module):
    """AlexNet with torchvision's layout; ``batch_norm=True`` gives the paper's AlexNet-BN.

    AlexNet-BN adds a BatchNorm2d after every convolution (before its ReLU) and one after pool5
    (on the 6x6 map, before flattening): the paper needs these for a 64K batch to converge.
    Module names match torchvision's ``alexnet`` (features/avgpool/classifier) when plain.
    """

    def __init__(self, *, num_classes: int, in_channels: int = 3, batch_norm: bool = False):
        super().__init__()
        self.features = _alexnet_features(in_channels, batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.pool5_bn = nn.BatchNorm2d(256) if batch_norm else nn.Identity()
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool5_bn(self.avgpool(self.features(x)))
        return self.classifier(torch.flatten(x, 1))


# (out_channels, kernel, stride, padding, max-pool after) for AlexNet's five convolutions.
_ALEXNET_CONVS = (
    (64, 11, 4, 2, True),
    (192, 5, 1, 2, True),
    (384, 3, 1, 1, False),
    (256, 3, 1, 1, False),
    (256, 3, 1, 1, True),
)


def _alexnet_features(in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_channels
    for out, kernel, stride, padding, pool in _ALEXNET_CONVS:
        # A conv bias right before BN is cancelled by BN's mean subtraction, so drop it.
        layers.append(nn.Conv2d(width, out, kernel, stride, padding, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        if pool:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        width = out
    return nn.Sequential(*layers)


MODELS.register("small_resnet", builder=SmallResNet)
MODELS.register("resnet50", builder=resnet50)
MODELS.register("alexnet_bn", builder=lambda **sizes: AlexNet(batch_norm=True, **sizes))
MODELS.register("alexnet", builder=lambda **sizes: AlexNet(batch_norm=False, **sizes))
# Our own four, in this order (tools that list "the" models, e.g. launch/plan.py).
OWN_MODEL_NAMES = MODELS.names


# ---- any torchvision classification architecture ------------------------------------------

# Builders whose layers depend on the input side, and the keyword that sets it.
SIZED_MODELS = {name: "image_size" for name in torchvision.models.list_models(
    module=torchvision.models, include="vit_*")} | {"maxvit_t": "input_size"}
# Architectures with auxiliary training heads: off, so the forward returns the logits alone.
_NO_AUX = {"googlenet": {"aux_logits": False, "init_weights": True},
           "inception_v3": {"aux_logits": False, "init_weights": True}}


def torchvision_model(name: str, *, num_classes: int, in_channels: int = 3,
                      image_size: int | None = None) -> nn.Module:
    """torchvision's ``name`` (no weights) with a ``num_classes`` head and, for inputs that
    are not RGB, a first convolution taking ``in_channels``."""
    kwargs = {"weights": None, "num_classes": num_classes, **_NO_AUX.get(name, {})}
    if image_size is not None and name in SIZED_MODELS:
        key = SIZED_MODELS[name]
        kwargs[key] = image_size if key == "image_size" else (image_size, image_size)
    model = torchvision.models.get_model_builder(name)(**kwargs)
    if in_channels != 3:
        _adapt_input_channels(model, in_channels=in_channels)
    if isinstance(model, torchvision.models.ResNet):
        init_weights(model)  # He init, zero residual gammas, N(0, 0.01) classifier
    return model


def _adapt_input_channels(model: nn.Module, *, in_channels: int) -> None:
    """Replace the first RGB convolution with one reading ``in_channels``. Its weights are
    the RGB weights summed over colour (tiled for more channels, scaled to keep the sum),
    so a grey image gives the output that image repeated as RGB would (timm does the same)."""
    name, conv = next(((name, module) for name, module in model.named_modules()
                       if isinstance(module, nn.Conv2d) and module.in_channels == 3), (None, None))
    if conv is None:
        raise ValueError(f"model.name: cannot find the RGB input convolution of "
                         f"{type(model).__name__} to give it {in_channels} input channels")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        summed = conv.weight.sum(dim=1, keepdim=True)
        new.weight.copy_(summed.repeat(1, in_channels, 1, 1) / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attribute, new)


def check_input_size(*, name: str, image_size: int) -> None:
    """ValueError unless ``name`` turns (image_size x image_size) inputs into logits: a
    forward on the meta device (no memory, no compute), before any run starts."""
    MODELS.get(name)
    try:
        with torch.device("meta"):
            model = build_model(name=name, num_classes=10, image_size=image_size).eval()
            with torch.no_grad():
                logits = model(torch.empty(1, 3, image_size, image_size))
    except NotImplementedError:
        return  # an operator without a meta kernel: nothing learnt, the run will tell
    except (RuntimeError, AssertionError, ValueError) as error:
        raise ValueError(
            f"model.name={name} cannot take {image_size}x{image_size} images "
            f"(data.image_size): {str(error).splitlines()[0] if str(error) else type(error).__name__}; "
            "choose a larger data.image_size or another model") from None
    if tuple(logits.shape) != (1, 10):
        raise ValueError(f"model.name={name} gives outputs of shape {tuple(logits.shape)} for "
                         f"{image_size}x{image_size} images, not (batch, classes)")


for _name in torchvision.models.list_models(module=torchvision.models):
    if _name not in MODELS:  # our resnet50 and alexnet keep their own builders
        MODELS.register(_name, builder=lambda _n=_name, **sizes: torchvision_model(_n, **sizes))
MODEL_NAMES = MODELS.names
