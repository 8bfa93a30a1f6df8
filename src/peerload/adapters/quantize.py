"""Weight-only int8 quantization with per-output-channel scales: a post-processing step that
changes shapes, dtypes and the tensor inventory, as engines' repacking does."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Int8Linear(torch.nn.Module):
    """y = x @ (weight * weight_scale[:, None]).T + bias, with int8 weight and per-row scale."""

    weight: torch.Tensor  # buffers, registered in __init__
    weight_scale: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        scale_dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=scale_dtype, device=device))
        self.bias = (
            torch.nn.Parameter(torch.empty(out_features, dtype=scale_dtype, device=device), requires_grad=False)
            if bias
            else None
        )

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> Int8Linear:
        w = linear.weight.detach()
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, w.dtype, device=w.device)
        scale = (w.float().abs().amax(dim=1) / 127.0).clamp(min=1e-8)
        q.weight = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
        q.weight_scale = scale.to(w.dtype)
        if linear.bias is not None:
            q.bias = torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_scale.to(x.dtype)[:, None]
        return F.linear(x, w, self.bias)


def quantize_int8(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Replace every nn.Linear (except names ending in `skip`) by Int8Linear; returns the count."""
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and not name.endswith(skip)
    ]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear.from_linear(linear))
    return len(targets)
