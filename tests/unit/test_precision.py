"""Mixed precision: fp32 master weights, loss scaling, skipped non-finite steps, and no
host sync in an fp16 step."""

import contextlib

import pytest
import torch

from trainers.lars import LARS
from trainers.precision import PRECISIONS, Precision


def config_of(name, **kwargs):
    return PRECISIONS.get(name).schema(name=name, **kwargs)


def make(name, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = LARS(model.parameters(), lr=0.1, weight_decay=1e-4)
    return model, optimizer, Precision(config_of(name, **kwargs), device_type="cpu")


def loss_of(model, precision):
    x = torch.randn(32, 8)
    with precision.autocast():
        out = model(x)
    return out.float().pow(2).mean(), out


def test_fp16_skips_step_on_inf_gradient_and_leaves_parameters_untouched():
    model, optimizer, precision = make("fp16", init_scale=1024.0)
    loss, _ = loss_of(model, precision)
    precision.backward(loss)
    model[0].weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    precision.step(optimizer)
    assert precision.skipped_steps == 1
    assert precision.loss_scale == 512.0  # halved
    for old, new in zip(before, model.parameters(), strict=True):
        assert torch.equal(old, new)
    assert optimizer.state == {} or all(
        torch.count_nonzero(s["momentum_buffer"]) == 0 for s in optimizer.state.values())


def test_fp16_finite_step_unscales_before_the_optimizer():
    # The same finite step in fp16-with-scaler and in plain fp32 must give nearly the same
    # update: LARS must see unscaled gradients (else its norms are off by the scale).
    model16, opt16, prec16 = make("fp16", init_scale=2.0**14)
    model32, opt32, prec32 = make("fp32")
    torch.manual_seed(1)
    loss16, out16 = loss_of(model16, prec16)
    torch.manual_seed(1)
    loss32, _ = loss_of(model32, prec32)
    assert out16.dtype == torch.float16  # autocast really computed in fp16
    prec16.backward(loss16)
    prec32.backward(loss32)
    prec16.step(opt16)
    prec32.step(opt32)
    assert prec16.skipped_steps == 0
    for p16, p32 in zip(model16.parameters(), model32.parameters(), strict=True):
        assert p16.dtype == torch.float32  # master weights stay fp32
        torch.testing.assert_close(p16, p32, rtol=2e-3, atol=2e-4)


def test_bf16_autocasts_without_scaler():
    model, optimizer, precision = make("bf16")
    loss, out = loss_of(model, precision)
    assert out.dtype == torch.bfloat16
    assert precision.scaler is None and precision.loss_scale == 1.0
    precision.backward(loss)
    precision.step(optimizer)
    assert precision.skipped_steps == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_state_dict_round_trips_scale_and_skip_count():
    model, optimizer, precision = make("fp16", init_scale=256.0)
    loss, _ = loss_of(model, precision)
    precision.backward(loss)
    model[2].bias.grad[0] = float("nan")
    precision.step(optimizer)
    restored = Precision(config_of("fp16"), device_type="cpu")
    restored.load_state_dict(precision.state_dict())
    assert restored.loss_scale == 128.0 and restored.skipped_steps == 1


def test_fp16_pure_keeps_fp16_parameters_through_training_steps():
    torch.manual_seed(0)
    precision = Precision(config_of("fp16_pure"), device_type="cpu")
    model = precision.prepare(torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3)))
    assert precision.upcast_update is False
    optimizer = LARS(model.parameters(), lr=0.1, weight_decay=1e-4,
                     upcast=precision.upcast_update)
    for _ in range(2):
        optimizer.zero_grad()
        with precision.autocast():
            out = model(torch.randn(8, 1, 8, 8).to(precision.input_dtype))
        assert out.dtype == torch.float16
        precision.backward(out.float().pow(2).mean())
        precision.step(optimizer)
        assert precision.skipped_steps == 0 and precision.scaler is None
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert {p.grad.dtype for p in model.parameters()} == {torch.float16}
    # No fp32 copy anywhere: the LARS momentum buffers are fp16 too.
    assert {s["momentum_buffer"].dtype for s in optimizer.state.values()} == {torch.float16}


def test_fp16_pure_loses_a_small_lars_update_that_master_weights_keep():
    """The brief's failure mode: w=1, g=1 per element, lr=0.1, trust 0.001 * ||w||/||g||
    gives an update of 1e-4, under half an fp16 ulp at 1.0 (2^-11), so fp16 weights do not
    move; fp32 weights match the float64 reference 1 - 1e-4."""
    reference = 1.0 - 0.1 * 0.001 * 1.0  # lr * trust(=tc * 16 / 16) * g, in float64
    for dtype, expected in ((torch.float16, 1.0), (torch.float32, reference)):
        weight = torch.nn.Parameter(torch.ones(16, 16, dtype=dtype))
        weight.grad = torch.ones(16, 16, dtype=dtype)
        LARS([weight], lr=0.1, momentum=0.0, trust_coefficient=0.001, upcast=False).step()
        torch.testing.assert_close(weight.double(), torch.full((16, 16), expected,
                                                               dtype=torch.float64),
                                   rtol=0, atol=1e-7)


# ---- no host sync per step --------------------------------------------------------------

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def refusing_host_reads(monkeypatch):
    """Every way Python code turns a tensor into a host value raises inside the block.
    On CPU nothing would wait, but it is the same code that syncs on CUDA."""
    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} read a device value on the host")
        return read
    with monkeypatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, refuse(name))
        yield


def fused_sgd_setup(init_scale=1024.0):
    # torch's fused SGD takes GradScaler's found_inf and skips on the device, the contract
    # LARS is to adopt (see the skipif below). Its first step is finite here: a skipped first
    # step would leave its empty_like momentum buffer uninitialised (a torch quirk).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
    return model, optimizer, Precision(config_of("fp16", init_scale=init_scale),
                                       device_type="cpu")


def train_step(model, optimizer, precision, *, poison=False):
    optimizer.zero_grad()
    loss, _ = loss_of(model, precision)
    precision.backward(loss)
    if poison:
        model[0].weight.grad[0, 0] = float("inf")
    precision.step(optimizer)


def test_fp16_step_reads_nothing_on_the_host_when_the_optimizer_skips_on_the_device(monkeypatch):
    model, optimizer, precision = fused_sgd_setup()
    assert precision.syncs_per_step(optimizer) == 0
    train_step(model, optimizer, precision)  # creates the momentum buffers
    before = [p.detach().clone() for p in model.parameters()]
    buffers = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    with refusing_host_reads(monkeypatch):
        train_step(model, optimizer, precision, poison=True)
    # The skip happened on the device: parameters and momentum untouched.
    for old, new in zip(before, model.parameters(), strict=True):
        assert torch.equal(old, new)
    for old, p in zip(buffers, model.parameters(), strict=True):
        assert torch.equal(old, optimizer.state[p]["momentum_buffer"])
    # The counters stayed on the device until read here.
    assert isinstance(precision._skipped_here, torch.Tensor)
    assert precision.skipped_steps == 1 and precision.loss_scale == 512.0
    with refusing_host_reads(monkeypatch):
        train_step(model, optimizer, precision)  # finite: the update happens
    assert not torch.equal(before[0], model[0].weight)
    assert precision.skipped_steps == 1


def test_an_optimizer_without_device_skips_costs_one_sync_per_step():
    # LARS until it takes GradScaler's found_inf; fp32/bf16 steps never sync.
    model, optimizer, precision = make("fp16")
    expected = 0 if getattr(optimizer, "_step_supports_amp_scaling", False) else 1
    assert precision.syncs_per_step(optimizer) == expected
    assert make("bf16")[2].syncs_per_step(optimizer) == 0


def test_skip_count_adds_to_the_resumed_one_and_counts_each_skipped_step():
    model, optimizer, precision = make("fp16", init_scale=1024.0)
    precision.load_state_dict({"skipped_steps": 5})
    assert precision.skipped_steps == 5  # no step yet: no device counter
    for poison in (True, False, True, True):
        train_step(model, optimizer, precision, poison=poison)
    assert precision.skipped_steps == 8
    assert precision.loss_scale == 1024.0 / 8
    assert precision.state_dict()["skipped_steps"] == 8


@pytest.mark.skipif(not getattr(LARS([torch.nn.Parameter(torch.ones(1))], lr=1.0),
                                "_step_supports_amp_scaling", False),
                    reason="trainers/lars.py does not take GradScaler's found_inf yet: LARS fp16 "
                           "steps still sync once (GradScaler reads found_inf with .item())")
def test_lars_skips_on_the_device_without_a_host_sync(monkeypatch):
    model, optimizer, precision = make("fp16", init_scale=1024.0)
    train_step(model, optimizer, precision)
    before = [p.detach().clone() for p in model.parameters()]
    buffers = {id(p): s["momentum_buffer"].clone() for p, s in optimizer.state.items()}
    with refusing_host_reads(monkeypatch):
        train_step(model, optimizer, precision, poison=True)
    for old, new in zip(before, model.parameters(), strict=True):
        assert torch.equal(old, new)
    for p, s in optimizer.state.items():
        assert torch.equal(buffers[id(p)], s["momentum_buffer"])
    assert precision.skipped_steps == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_step_makes_no_host_sync():
    # torch's own sync detector: any synchronising call in the step raises.
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
    precision = Precision(config_of("fp16"), device_type="cuda")
    x = torch.randn(32, 8, device="cuda")
    for step in range(3):
        optimizer.zero_grad()
        with precision.autocast():
            loss = model(x).float().pow(2).mean()
        precision.backward(loss)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if step else "default")  # step 0 allocates
        try:
            precision.step(optimizer)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert precision.skipped_steps >= 0
