"""One weight per matrix-vector product of a decode step: Q/K/V and gate/up stored side by side.

A decode step multiplies one row by every weight of a layer. Three projections for Q, K and V (the
K and V ones are 3584 x 512 at 7B: a few microseconds of launch and tail each, for 3.7 MB of
reads) and two for gate and up cost kernels the GPU spends waiting, not reading. Here each layer's
q/k/v weights (and biases) become consecutive rows of one `[Hq*D + 2*Hkv*D, d]` tensor and gate/up
of one `[2I, d]` tensor, and the modules' parameters are re-pointed at row slices of it: nothing is
duplicated (the fused tensor IS the storage the modules read), the modules compute exactly what
they did, and the decode step runs one GEMV where it ran three (two).

Only plain `nn.Linear` projections of one dtype and device, with all or none of Q/K/V biased (and
an unbiased SiLU gate/up), are fused; any other layer is left as it is and decodes through its
modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spava.models.fused_ops import SWIGLU_MLP_TYPES, is_silu


@dataclass
class FusedLayer:
    """One layer's fused decode weights (row slices of these are the modules' own parameters).

    qkv_weight: `[Hq*D + 2*Hkv*D, d]`; qkv_bias: `[Hq*D + 2*Hkv*D]` or None; qkv_sizes: the three
    row counts; gate_up: `[2I, d]` (gate rows first) or None when the MLP is not a known SwiGLU.
    """

    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor | None
    qkv_sizes: tuple[int, int, int]
    gate_up: torch.Tensor | None
    intermediate: int


def _plain_linears(modules: list[nn.Module]) -> bool:
    """Every module is an `nn.Linear` with a dense weight, all on one device in one dtype."""
    if not all(type(m) is nn.Linear for m in modules):
        return False
    weights = [m.weight for m in modules]
    if any(w.layout != torch.strided or w.is_meta for w in weights):
        return False
    return len({(w.dtype, w.device, w.shape[1]) for w in weights}) == 1


def _share_rows(linears: list[nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the weights (and biases) and re-point every module at its rows of the result."""
    sizes = [m.weight.shape[0] for m in linears]
    with torch.no_grad():
        weight = torch.cat([m.weight.detach() for m in linears])
        has_bias = linears[0].bias is not None
        bias = torch.cat([m.bias.detach() for m in linears]) if has_bias else None
        bias_rows = bias.split(sizes) if has_bias else [None] * len(linears)
        for module, rows, bias_row in zip(linears, weight.split(sizes), bias_rows):
            module.weight = nn.Parameter(rows, requires_grad=False)
            if has_bias:
                module.bias = nn.Parameter(bias_row, requires_grad=False)
    return weight, bias


def fuse_layer(layer: nn.Module) -> FusedLayer | None:
    """Fuse one decoder layer's Q/K/V (and SwiGLU gate/up) in place; None if its projections are not
    plain linears of one kind (the layer then decodes through its modules unchanged)."""
    attn = layer.self_attn
    qkv = [getattr(attn, name, None) for name in ("q_proj", "k_proj", "v_proj")]
    if any(m is None for m in qkv) or not _plain_linears(qkv):
        return None
    if len({m.bias is None for m in qkv}) != 1:
        return None
    mlp = layer.mlp
    is_swiglu = (type(mlp).__name__ in SWIGLU_MLP_TYPES and is_silu(mlp.act_fn)
                 and _plain_linears([mlp.gate_proj, mlp.up_proj])
                 and mlp.gate_proj.bias is None and mlp.up_proj.bias is None)
    qkv_weight, qkv_bias = _share_rows(qkv)
    gate_up, intermediate = None, 0
    if is_swiglu:
        intermediate = mlp.gate_proj.weight.shape[0]
        gate_up, _ = _share_rows([mlp.gate_proj, mlp.up_proj])
    sizes = tuple(m.weight.shape[0] for m in qkv)
    return FusedLayer(qkv_weight, qkv_bias, sizes, gate_up, intermediate)


def fuse_layers(layers: nn.ModuleList) -> list[FusedLayer | None]:
    """`fuse_layer` of every layer, one at a time (the transient extra memory is one layer's)."""
    return [fuse_layer(layer) for layer in layers]
