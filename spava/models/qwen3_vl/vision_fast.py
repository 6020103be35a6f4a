"""Qwen3-VL's vision tower with HF's weights and arithmetic, in fewer and larger kernels.

HF's forward (`model.vision_impl: hf`) embeds patches with a 3-D convolution, rotates q and k with
about ten eager float32 passes over `[P, H, D]`, and calls attention once per temporal grid
through SDPA, where head_dim 72 runs on tiles padded to 96 or 128. Here, with the same modules:

* the patch embedding is one GEMM (a convolution whose stride equals its kernel multiplies
  flattened patches by the flattened kernel);
* the learned position embeddings are interpolated once per distinct grid size and added to every
  temporal grid of that size in place (HF interpolates and materialises them for every patch);
* q and k are rotated in one compiled kernel (HF's float32 formula; eager off CUDA);
* all temporal grids attend in one call (`varlen_attention`; on CUDA spava's flash kernel, which
  splits head_dim 72 into 64 + a 16-wide masked tile);
* LayerNorm, the GELU MLP, the merger and the DeepStack mergers are HF's modules, called as HF
  calls them.

CPU tests pin the output to HF's tower in float64 (`tests/test_qwen3_vision_fast.py`).
"""

from __future__ import annotations

import collections
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spava.models.qwen2_5_vl.vision_fast import _make_ops
from spava.models.varlen_attention import VarlenGroups, plan_varlen_groups, triton_windows_available, varlen_attention


def has_layout_helpers() -> bool:
    """Whether this transformers has the vision layout helpers the fast tower uses (5.x releases
    from the one that moved them to `transformers.vision_utils`)."""
    return importlib.util.find_spec("transformers.vision_utils") is not None


@dataclass(frozen=True)
class GridLayout:
    """What every block needs for one list of grids: position embeddings per grid size, rotary
    cos/sin `[P, D/2]` float32 in patch order, and the attention groups (one sequence per temporal grid)."""

    grids: tuple[tuple[int, int, int], ...]
    position_embeds: dict[tuple[int, int], torch.Tensor]  # (h, w) -> `[h * w, C]`
    cos: torch.Tensor
    sin: torch.Tensor
    groups: VarlenGroups


class FastQwen3Vision:
    """`encode(pixel_rows, grid_thw)` of a Qwen3-VL vision tower (`Qwen3VLVisionModel`), same weights.

    Args:
        hf_visual: the HF tower (its modules are used, not copied).
        compile: torch.compile the rotary; None = on CUDA when Triton is importable.
        backends: attention backends in priority order (see `varlen_attention`); None = spava's flash
            kernel on CUDA where `spava_kernels` imports, PyTorch's SDPA order otherwise.
        max_cached_layouts: grid lists whose layout is kept (least recently used dropped).
    """

    def __init__(self, hf_visual, *, compile: bool | None = None, backends: Sequence[str] | None = None,
                 max_cached_layouts: int = 4):
        cfg = hf_visual.config
        self.hf_visual = hf_visual
        weight = hf_visual.patch_embed.proj.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.patch_weight = weight.reshape(weight.shape[0], -1)  # a view: the Conv3d's own storage
        self.patch_bias = hf_visual.patch_embed.proj.bias
        self.num_heads = cfg.num_heads
        self.scale = (cfg.hidden_size // cfg.num_heads) ** -0.5
        self.merge = cfg.spatial_merge_size
        self.deepstack = {index: merger for index, merger in
                          zip(cfg.deepstack_visual_indexes, hf_visual.deepstack_merger_list)}
        if compile is None:
            compile = self.device.type == "cuda" and importlib.util.find_spec("triton") is not None
        self.ops = _make_ops(bool(compile))
        if backends is None and self.device.type == "cuda" and triton_windows_available():
            backends = ["triton"]
        self.backends = backends
        self.max_cached_layouts = max_cached_layouts
        self._layouts: collections.OrderedDict = collections.OrderedDict()

    # ----- layouts ------------------------------------------------------------------------------

    def layout(self, grid_thw) -> GridLayout:
        """The (cached) layout of a list of (t, h, w) grids."""
        grids = tuple(tuple(int(x) for x in g) for g in torch.as_tensor(grid_thw).reshape(-1, 3).tolist())
        if grids in self._layouts:
            self._layouts.move_to_end(grids)
            return self._layouts[grids]
        layout = self._make_layout(grids)
        self._layouts[grids] = layout
        while len(self._layouts) > self.max_cached_layouts:
            self._layouts.popitem(last=False)
        return layout

    def _make_layout(self, grids) -> GridLayout:
        from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

        visual, device = self.hf_visual, self.device
        position_embeds, rotary = {}, {}
        for _, h, w in grids:
            if (h, w) in position_embeds:
                continue
            one = torch.tensor([[1, h, w]], device=device)
            indices, weights = get_vision_interpolation_indices_and_weights(
                one, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
                align_corners=visual.interpolation_align_corners, spatial_merge_size=self.merge)
            position_embeds[(h, w)] = (visual.pos_embed(indices) * weights[:, :, None]).sum(1)
            position_ids = get_vision_position_ids(one, self.merge)
            cos, sin = visual.rotary_pos_emb(position_embeds[(h, w)], position_ids)
            half = cos.shape[-1] // 2  # HF's cos/sin are the same half twice
            rotary[(h, w)] = (cos[:, :half].float(), sin[:, :half].float())
        cos = torch.cat([rotary[(h, w)][0].repeat(t, 1) for t, h, w in grids])
        sin = torch.cat([rotary[(h, w)][1].repeat(t, 1) for t, h, w in grids])
        cu_seqlens = [0]
        for t, h, w in grids:  # one sequence per temporal grid
            base = cu_seqlens[-1]
            cu_seqlens.extend(base + h * w * (i + 1) for i in range(t))
        return GridLayout(grids, position_embeds, cos, sin, plan_varlen_groups(cu_seqlens, device=device))

    # ----- forward ------------------------------------------------------------------------------

    def _embed(self, pixel_rows: torch.Tensor, layout: GridLayout) -> torch.Tensor:
        """Pixel rows `[P, 3*T*p*p]` -> patch embeddings plus position embeddings `[P, C]`."""
        hidden = F.linear(pixel_rows.to(self.dtype), self.patch_weight, self.patch_bias)
        start = 0
        for t, h, w in layout.grids:
            rows = hidden[start: start + t * h * w].view(t, h * w, -1)
            rows += layout.position_embeds[(h, w)].to(hidden.dtype)  # HF: hidden + pos (cast), every grid
            start += t * h * w
        return hidden

    def encode(self, pixel_rows: torch.Tensor, grid_thw) -> torch.Tensor:
        """Pixel rows `[P, 3*2*16*16]` of the grids -> `[P/4, d * (1 + K)]`: the merger's embedding and
        the K DeepStack features of each merged token (the adapter's `encode` contract)."""
        layout = self.layout(grid_thw)
        hidden = self._embed(pixel_rows, layout)
        num_patches = hidden.shape[0]
        deepstack = []
        for index, block in enumerate(self.hf_visual.blocks):
            qkv = block.attn.qkv(block.norm1(hidden))
            q, k, v = self.ops.rotary_qkv(qkv, layout.cos, layout.sin, self.num_heads)
            del qkv
            out = varlen_attention(q, k, v, None, scale=self.scale, groups=layout.groups, backends=self.backends)
            del q, k, v
            hidden = hidden + block.attn.proj(out.reshape(num_patches, -1))
            del out
            hidden = hidden + block.mlp(block.norm2(hidden))
            if index in self.deepstack:
                deepstack.append(self.deepstack[index](hidden))
        return torch.cat([self.hf_visual.merger(hidden), *deepstack], dim=1)
