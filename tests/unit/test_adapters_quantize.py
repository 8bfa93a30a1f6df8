"""Weight-only int8 post-processing."""

from __future__ import annotations

import torch

from peerload.adapters.quantize import Int8Linear, quantize_int8


def test_int8_quantization_changes_layout_and_stays_close():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    x = torch.randn(4, 16)
    ref = model(x)
    assert quantize_int8(model) == 2
    assert isinstance(model[0], Int8Linear) and model[0].weight.dtype == torch.int8
    assert model[0].weight_scale.shape == (32,)
    assert torch.allclose(model(x), ref, atol=0.05)
    with torch.device("meta"):
        meta = torch.nn.Sequential(torch.nn.Linear(16, 32))
    quantize_int8(meta)
    assert meta[0].weight.is_meta and meta[0].weight.dtype == torch.int8
