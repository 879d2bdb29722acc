"""KDQ fake quantisation (Whisper-KDQ): the student's linears trained through b-bit rounding."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


class FakeQuantize(nn.Module):
    """Symmetric per-tensor fake quantisation with a straight-through estimator.

    q_max = 2^(b-1) - 1,  s = max|w| / q_max,  w_q = clamp(round(w / s), -q_max, q_max) * s,
    forward value w_q, gradient d w_q / d w := 1 (``w + (w_q - w).detach()``). At most 2^b - 1 distinct values.
    (DQ-Whisper's code scales by the signed maximum; the absolute maximum used here cannot overflow.)
    """

    def __init__(self, bits: int):
        super().__init__()
        if not 2 <= bits <= 16:
            raise ValueError(f"fake-quant bits must be in [2, 16], got {bits}")
        self.bits = int(bits)
        self.q_max = 2 ** (self.bits - 1) - 1

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = (w.detach().abs().max() / self.q_max).clamp_min(torch.finfo(w.dtype).tiny)
        w_q = torch.clamp(torch.round(w / scale), -self.q_max, self.q_max) * scale
        return w + (w_q - w).detach()


def fake_quantize_linears(model: nn.Module, bits: int) -> list[str]:
    """Fake-quantise every ``nn.Linear`` weight of the decoder (``model.model.decoder``); returns their names.

    Uses ``torch.nn.utils.parametrize``: the float weight lives on as
    ``<module>.parametrizations.weight.original`` (this changes state_dict keys). Undo with
    :func:`remove_fake_quant` before ``save_pretrained``.
    """
    decoder = model.model.decoder
    names = []
    for name, module in decoder.named_modules():
        if isinstance(module, nn.Linear) and not parametrize.is_parametrized(module, "weight"):
            parametrize.register_parametrization(module, "weight", FakeQuantize(bits))
            names.append(f"model.decoder.{name}")
    return names


def remove_fake_quant(model: nn.Module, keep_quantized: bool = False) -> int:
    """Remove the fake quantisation; ``keep_quantized`` bakes the quantised values in. Returns modules changed."""
    n = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
            isinstance(p, FakeQuantize) for p in module.parametrizations["weight"]
        ):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=keep_quantized)
            n += 1
    return n
