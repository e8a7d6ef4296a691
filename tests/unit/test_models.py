"""Unit tests for trainers.models: shapes, initialisation rules, AlexNet-BN layout, cost."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from trainers.models import MODEL_NAMES, OWN_MODEL_NAMES, build_model, final_layer


def _seeded(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name=name, num_classes=10)


# Large models are built once per module (init of ~60M params is the slow part on CPU); tests
# using them only run eval-mode no-grad forwards, so they cannot change each other's view.
@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return _seeded("resnet50").eval()


@pytest.fixture(scope="module")
def alexnet() -> nn.Module:
    return _seeded("alexnet").eval()


@pytest.fixture(scope="module")
def alexnet_bn() -> nn.Module:
    return _seeded("alexnet_bn").eval()


def _shared(request: pytest.FixtureRequest, name: str) -> nn.Module:
    """The module-scoped seeded model for ``name`` (small_resnet is cheap: built fresh)."""
    if name == "small_resnet":
        return _seeded(name)
    return request.getfixturevalue(name)


def _bn_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [
        (name, m.weight)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


def _execution_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """Leaf modules in the order the forward pass actually runs them."""
    order: list[nn.Module] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in leaves]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return [m for m in order if not isinstance(m, nn.Identity)]


def _count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of conv and linear layers for one forward pass of ``x``."""
    macs = 0

    def hook(mod: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            per_out = mod.in_channels // mod.groups * math.prod(mod.kernel_size)
            macs += output.numel() * per_out
        else:
            macs += output.numel() * mod.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return macs


@pytest.mark.parametrize(
    ("name", "in_channels", "size"),
    [
        ("small_resnet", 3, 32),
        ("small_resnet", 1, 32),
        ("resnet50", 3, 64),
        ("resnet50", 1, 64),
        ("alexnet", 3, 64),
        ("alexnet_bn", 3, 64),
        ("alexnet_bn", 1, 64),
    ],
)
def test_output_shape(request, name: str, in_channels: int, size: int) -> None:
    if in_channels == 3:
        model, num_classes = _shared(request, name).eval(), 10
    else:
        model, num_classes = build_model(name=name, num_classes=7, in_channels=1).eval(), 7
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_model_names_order() -> None:
    assert OWN_MODEL_NAMES == ("small_resnet", "resnet50", "alexnet_bn", "alexnet")
    # Then every other torchvision classification architecture, once.
    assert MODEL_NAMES[:4] == OWN_MODEL_NAMES and len(set(MODEL_NAMES)) == len(MODEL_NAMES)


def test_unknown_name_raises() -> None:
    with pytest.raises(ValueError, match="model.name") as info:
        build_model(name="vgg_nope", num_classes=10)
    assert "vgg_nope" in str(info.value)
    assert all(name in str(info.value) for name in MODEL_NAMES)


@pytest.mark.parametrize(
    ("num_classes", "in_channels"), [(1, 3), (0, 3), (10, 0), (2.5, 3), (True, 3)]
)
def test_bad_sizes_raise(num_classes, in_channels) -> None:
    with pytest.raises(ValueError):
        build_model(name="small_resnet", num_classes=num_classes, in_channels=in_channels)


def test_resnet50_zero_init_last_bn_gamma(resnet50: nn.Module) -> None:
    blocks = [m for m in resnet50.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    zero_ids = {id(b.bn3.weight) for b in blocks}
    for block in blocks:
        assert torch.count_nonzero(block.bn3.weight) == 0
    others = [(n, w) for n, w in _bn_weights(resnet50) if id(w) not in zero_ids]
    assert others, "expected non-residual BNs (stem, downsample, bn1/bn2)"
    for name, weight in others:
        assert torch.all(weight == 1), name
    for _, m in resnet50.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.bias == 0)


def test_small_resnet_zero_init_last_bn_gamma() -> None:
    model = build_model(name="small_resnet", num_classes=10)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 3
    zero_ids = {id(b.bn2.weight) for b in blocks}
    for block in blocks:
        assert torch.count_nonzero(block.bn2.weight) == 0
    for name, weight in _bn_weights(model):
        if id(weight) not in zero_ids:
            assert torch.all(weight == 1), name


def test_resnet50_final_fc_init(resnet50: nn.Module) -> None:
    fc = final_layer(resnet50)
    assert fc is resnet50.fc
    assert fc.weight.shape == (10, 2048)
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert abs(fc.weight.mean().item()) < 1e-3
    assert torch.all(fc.bias == 0)


@pytest.mark.parametrize("name", ["small_resnet", "alexnet", "alexnet_bn"])
def test_final_fc_init_other_models(request, name: str) -> None:
    if name == "small_resnet":  # 64x10 weights are too few for a 15% std check
        torch.manual_seed(0)
        model = build_model(name=name, num_classes=100)
    else:
        model = _shared(request, name)
    fc = final_layer(model)
    assert fc.out_features == (100 if name == "small_resnet" else 10)
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.15)
    assert torch.all(fc.bias == 0)


def test_resnet50_conv_he_init(resnet50: nn.Module) -> None:
    conv = resnet50.layer4[0].conv2
    fan_out = conv.out_channels * math.prod(conv.kernel_size)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    assert abs(conv.weight.mean().item()) < 1e-3


def test_alexnet_conv_he_init(alexnet: nn.Module) -> None:
    conv = alexnet.features[6]
    assert isinstance(conv, nn.Conv2d) and conv.out_channels == 384
    fan_out = conv.out_channels * math.prod(conv.kernel_size)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    assert torch.all(conv.bias == 0)


def test_alexnet_bn_has_bn_after_every_conv_and_pool5(alexnet_bn: nn.Module) -> None:
    order = _execution_order(alexnet_bn, torch.randn(1, 3, 64, 64))
    convs = [i for i, m in enumerate(order) if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5
    for i in convs:
        assert isinstance(order[i + 1], nn.BatchNorm2d)
        assert isinstance(order[i + 2], nn.ReLU)
    pool5 = next(i for i, m in enumerate(order) if isinstance(m, nn.AdaptiveAvgPool2d))
    assert isinstance(order[pool5 - 1], nn.MaxPool2d)
    assert isinstance(order[pool5 + 1], nn.BatchNorm2d)
    assert order[pool5 + 1].num_features == 256
    after = order[pool5 + 2 :]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in after)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in order) == 6
    linears = [m for m in order if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (256 * 6 * 6, 4096),
        (4096, 4096),
        (4096, 10),
    ]


def test_plain_alexnet_has_no_batchnorm(alexnet: nn.Module) -> None:
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in alexnet.modules())
    order = _execution_order(alexnet, torch.randn(1, 3, 64, 64))
    assert sum(isinstance(m, nn.Conv2d) for m in order) == 5
    assert sum(isinstance(m, nn.MaxPool2d) for m in order) == 3


def test_small_resnet_cost_and_backward() -> None:
    model = build_model(name="small_resnet", num_classes=10)
    macs = _count_macs(model, torch.randn(1, 3, 32, 32))
    assert 3e6 <= macs <= 20e6, macs
    model.train()
    x = torch.randn(8, 3, 32, 32)
    loss = nn.functional.cross_entropy(model(x), torch.randint(0, 10, (8,)))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # Zero-init gammas must still receive gradient, or the residual branches never switch on.
    assert model.layer1[0].bn2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", OWN_MODEL_NAMES)
def test_build_is_deterministic_under_seed(request, name: str) -> None:
    # Shared models are only used in eval mode, so their state still equals a fresh build.
    first = _shared(request, name).state_dict()
    second = _seeded(name).state_dict()
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key
