"""trainers/speed.py: channels_last, torch.compile and the CUDA flags leave what the model
computes unchanged (within float rounding), and the fused input normalisation matches the
plain one. What can only be seen on a GPU (the speed) is benchmarks/gpu_check.py's job."""

import pytest
import torch
from torch import nn

from trainers.lars import LARS
from trainers.speed import (
    configure_for_speed,
    enable_cuda_fast_paths,
    model_input,
    normalization_constants,
    resolve_channels_last,
    to_model_layout,
)

CPU = torch.device("cpu")


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


@pytest.fixture
def restore_backend_flags():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    yield
    (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
     torch.backends.cudnn.allow_tf32) = saved


def test_channels_last_defaults_to_on_for_cuda_only():
    assert resolve_channels_last(None, device=torch.device("cuda")) is True
    assert resolve_channels_last(None, device=CPU) is False
    assert resolve_channels_last(True, device=CPU) is True
    assert resolve_channels_last(False, device=torch.device("cuda")) is False


def test_cpu_leaves_the_process_wide_cuda_flags_alone(restore_backend_flags):
    torch.backends.cudnn.benchmark = False
    configure_for_speed(tiny_net(), device=CPU, channels_last=None, compile=False)
    assert torch.backends.cudnn.benchmark is False


def test_cuda_flags_use_the_api_that_keeps_torch_compile_working(restore_backend_flags):
    # Settable without a GPU. The torch 2.14 trap: the new fp32_precision API alone makes
    # these legacy getters (read by inductor) raise "mix of the legacy and new APIs".
    enable_cuda_fast_paths()
    assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    enable_cuda_fast_paths(tf32=False)
    assert torch.get_float32_matmul_precision() == "highest"


def test_channels_last_model_computes_the_same_and_trains_the_same():
    plain, fast = tiny_net(), tiny_net()
    assert configure_for_speed(fast, device=CPU, channels_last=True, compile=False) is fast
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert list(fast.state_dict()) == list(plain.state_dict())
    torch.manual_seed(1)
    images = torch.randn(4, 3, 9, 9)
    labels = torch.randint(0, 5, (4,))
    runs = [(model, LARS(model.parameters(), lr=0.5, weight_decay=1e-4), x)
            for model, x in ((plain, images), (fast, to_model_layout(images, channels_last=True)))]
    for _ in range(3):  # LARS steps on channels_last weights with their gradients
        for model, optimizer, x in runs:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), labels).backward()
            optimizer.step()
    for a, b in zip(plain.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fused_input_matches_normalize_in_layout_and_dtype():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = torch.randint(0, 256, (2, 3, 6, 6), dtype=torch.uint8)
    # The plain float64 formula: (x / 255 - mean) / std per channel.
    reference = ((images.double() / 255.0 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1))
                 / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)).float()
    scale, shift = normalization_constants(mean, std, device=CPU)
    exact = model_input(images, scale=scale, shift=shift, dtype=torch.float32,
                        channels_last=False)
    torch.testing.assert_close(exact, reference, rtol=1e-6, atol=1e-6)
    half = model_input(images, scale=scale, shift=shift, dtype=torch.bfloat16,
                       channels_last=True)
    assert half.dtype == torch.bfloat16
    assert half.is_contiguous(memory_format=torch.channels_last)
    # One rounding of the fp32 result to bf16 (8 significant bits).
    torch.testing.assert_close(half.float(), reference, rtol=2**-8, atol=1e-6)


def test_compiled_model_keeps_its_state_dict_and_gradients():
    # aot_eager: dynamo and AOT autograd as with inductor, without its code generation
    # (minutes on a busy 2-core machine). Inductor itself runs in benchmarks/gpu_check.py.
    plain, compiled = tiny_net(), tiny_net()
    configure_for_speed(compiled, device=CPU, channels_last=True, compile=True,
                        compile_backend="aot_eager")
    assert list(compiled.state_dict()) == list(plain.state_dict())  # checkpoints unchanged
    torch.manual_seed(2)
    images = torch.randn(4, 3, 9, 9)
    for model in (plain, compiled):
        model(images).square().mean().backward()
    torch.testing.assert_close(compiled(images), plain(images), rtol=1e-4, atol=1e-5)
    for a, b in zip(plain.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
