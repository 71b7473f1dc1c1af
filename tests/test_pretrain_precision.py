"""Mixed precision keeps fp32 master weights: autocast casts activations only, GradScaler scales the loss."""
import torch

from bot.engine.precision import Precision


def _step(mode):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prec = Precision(mode, torch.device("cpu"))
    with prec.autocast():
        out = model(torch.randn(2, 3, 8, 8))
        loss = out.float().pow(2).mean()
    prec.backward_and_step(loss, opt)
    return model, out, prec


def test_bf16_autocast_on_cpu_keeps_fp32_weights():
    model, out, prec = _step("bf16")
    assert out.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not prec.scaler.is_enabled()


def test_fp16_uses_grad_scaler_and_fp32_master_weights():
    model, out, prec = _step("fp16")
    assert out.dtype == torch.float16
    assert prec.scaler.is_enabled() and prec.scaler.get_scale() == 65536.0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ref, _, _ = _step("fp32")
    # The scaled-then-unscaled fp16 step lands close to the fp32 step.
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-2)


def test_fp32_is_plain():
    model, out, prec = _step("fp32")
    assert out.dtype == torch.float32 and not prec.scaler.is_enabled()
