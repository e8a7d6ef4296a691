"""Unit tests for the torchvision architectures in trainers.models: any classification
model by name, with the data's input channels and classes, the paper's init on ResNets,
and clear errors for unknown names and image sizes a model cannot take."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from job.config import compose
from trainers.models import MODEL_NAMES, build_model, check_input_size, final_layer

# Small members of four families (the ViT through its image_size argument at 32 px).
CASES = ("resnet18", "mobilenet_v3_small", "squeezenet1_1", "vit_b_16")


def test_every_torchvision_classifier_is_known() -> None:
    names = set(torchvision.models.list_models(module=torchvision.models))
    assert names <= set(MODEL_NAMES)
    assert {"efficientnet_b0", "convnext_tiny", "vit_b_16", "resnet18"} <= names


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_builds_with_channels_and_classes(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = build_model(name=name, num_classes=7, in_channels=in_channels, image_size=32)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == in_channels
    model.train()  # BN in training mode: a real forward and backward of a tiny batch
    logits = model(torch.randn(4, in_channels, 32, 32))
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    assert first.weight.grad is not None and torch.isfinite(first.weight.grad).all()


def test_grey_input_equals_the_rgb_model_on_a_repeated_image() -> None:
    # The 1-channel stem holds the RGB weights summed over colour: same function.
    torch.manual_seed(0)
    rgb = build_model(name="mobilenet_v3_small", num_classes=5).eval()
    torch.manual_seed(0)
    grey = build_model(name="mobilenet_v3_small", num_classes=5, in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = rgb.double()(x.expand(2, 3, 32, 32))
        assert torch.allclose(grey.double()(x), expected, rtol=1e-9, atol=1e-12)


def test_resnet18_zero_init_residual_and_paper_head() -> None:
    torch.manual_seed(0)
    model = build_model(name="resnet18", num_classes=100)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    assert all(torch.count_nonzero(block.bn2.weight) == 0 for block in blocks)
    assert torch.all(model.bn1.weight == 1) and torch.all(blocks[0].bn1.weight == 1)
    fc = final_layer(model)
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.1) and torch.all(fc.bias == 0)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="model.name") as info:
        build_model(name="resnet19", num_classes=10)
    message = str(info.value)
    assert "resnet19" in message
    assert all(name in message for name in ("small_resnet", "resnet18", "vit_b_16",
                                            "efficientnet_b0", "convnext_tiny"))


def test_config_accepts_a_torchvision_name_and_rejects_unknown_before_ray() -> None:
    assert compose(["model.name=resnet18"]).model.name == "resnet18"
    with pytest.raises(ValueError, match="unknown model 'nope'.*resnet18"):
        compose(["model.name=nope"])


def test_image_size_a_model_cannot_take_is_a_config_error() -> None:
    check_input_size(name="vit_b_16", image_size=32)  # ViT takes image_size: fine
    check_input_size(name="resnet18", image_size=32)
    with pytest.raises(ValueError, match=r"model.name=maxvit_t cannot take 32x32 images "
                                         r"\(data.image_size\).*partition size"):
        check_input_size(name="maxvit_t", image_size=32)
    with pytest.raises(ValueError, match=r"model.name=alexnet cannot take 32x32"):
        compose(["model.name=alexnet"])  # digits are 32x32: AlexNet's pools run out
    check_input_size(name="maxvit_t", image_size=224)
