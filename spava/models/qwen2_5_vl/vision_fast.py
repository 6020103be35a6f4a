"""A fast forward for HF's Qwen2.5-VL vision tower, numerically equal to it, reusing its weights.

HF's `Qwen2_5_VisionTransformerPretrainedModel` runs one SDPA call per 8x8-patch window (and per
temporal grid in the full-attention blocks), which makes a long video launch-bound. Here:

* Token orders. Everything except attention is per token, so each block may run in whichever row
  order suits its attention. Window blocks use a *size-sorted window order* (windows of HF's window
  order, stably sorted by size, largest first), so all full 64-token windows form one contiguous
  run and each distinct window size is one batched SDPA on a view. Full-attention blocks use the
  *natural* order (the input's), where every temporal grid is contiguous. Rows move between the
  orders by precomputed index gathers only when consecutive blocks differ (8 times for 7B), and
  the merger runs in whatever order the last block left (natural for 7B: block 31 is full).
* Per block: RMSNorm (fused with the residual add), one qkv GEMM, rotary (float32, from cos/sin
  computed once per layout), `varlen_attention`, proj, and a SwiGLU MLP whose gate and up
  projections are one GEMM with the intermediate width padded to a multiple of 64 with zero rows
  (3420 is not 16-byte aligned, which slows cuBLAS; zero rows add exact zeros).
* Layouts (orders, attention groups, cos/sin) are cached per grid_thw on the instance.
* Elementwise pieces can be `torch.compile`d (default on CUDA when Triton is there): they move more
  bytes than the GEMMs' time hides otherwise. Eager they are op-for-op HF's (exact on CPU). Calls
  are chunked so that no intermediate reaches 2**31 elements (int32 indexing in the kernels).

Exactness: Qwen2.5-VL's ViT never attends across temporal grids, so `encode_chunked` splits at
temporal-grid boundaries and gives the same result as one call.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spava.models.varlen_attention import (TRITON_MAX_SEQLEN, VarlenGroups, plan_varlen_groups,
                                           triton_kernel_for, triton_windows_available, varlen_attention)

Grid = tuple[int, int, int]


# ----------------------------------------------------------------------------- elementwise pieces
def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's Qwen2_5_VLRMSNorm: normalise in float32, cast back, then scale. `[N, C] -> [N, C]`."""
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """Residual add then RMSNorm: returns (x + delta, norm(x + delta)), both `[N, C]`."""
    x = x + delta
    return x, _rms_norm(x, weight, eps)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's rotary in float32: x `[N, H, D]`, cos/sin `[N, D/2]` (HF's cos is this twice) -> x.dtype.

    `x1*c - x2*s` is bitwise HF's `x1*c + (-x2)*s` (negation and subtraction are exact).
    """
    x32 = x.float()
    half = x32.shape[-1] // 2
    x1, x2 = x32[..., :half], x32[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


def _rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int):
    """qkv `[N, 3C]` -> rotated q, k `[N, H, D]` and v (a view) `[N, H, D]`."""
    q, k, v = qkv.view(qkv.shape[0], 3, num_heads, -1).unbind(1)
    return _rotate(q, cos, sin), _rotate(k, cos, sin), v


def _swiglu(gate_up: torch.Tensor, width: int) -> torch.Tensor:
    """`[N, 2W]` (gate then up) -> silu(gate) * up `[N, W]`, HF's op order."""
    return F.silu(gate_up[:, :width]) * gate_up[:, width:]


@dataclass(frozen=True)
class _Ops:
    rms_norm: Callable
    add_rms_norm: Callable
    rotary_qkv: Callable
    swiglu: Callable


def _make_ops(is_compiled: bool) -> _Ops:
    fns = (_rms_norm, _add_rms_norm, _rotary_qkv, _swiglu)
    if is_compiled:
        # Automatic dynamic shapes: static first, then only the dims that changed (the row count)
        # become symbolic. dynamic=True would make widths and head counts symbolic too, which cost
        # 2-4x in these kernels (H100: rotary 4.4 ms vs 1.2 ms at 297k rows).
        fns = tuple(torch.compile(fn, dynamic=None) for fn in fns)
    return _Ops(*fns)


# ----------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class OrderPlan:
    """What blocks need in one row order: attention groups and rotary cos/sin `[P, D/2]` float32."""

    groups: VarlenGroups
    cos: torch.Tensor
    sin: torch.Tensor


@dataclass(frozen=True)
class VisionLayout:
    """Row orders of one grid_thw (P patch rows, U = P / merge^2 merge units).

    to_window `[P]`: window-order row i is natural row to_window[i]; to_natural `[P]`: its inverse.
    units_to_natural `[U]`: natural merge unit j is window-order unit units_to_natural[j].
    """

    num_patches: int
    to_window: torch.Tensor
    to_natural: torch.Tensor
    units_to_natural: torch.Tensor
    window: OrderPlan
    natural: OrderPlan


def _frame_windows(rows: int, cols: int, units_per_window: int) -> list[tuple[int, torch.Tensor]]:
    """One frame's windows in HF's order: (size in units, unit indices) sorted by size, largest first."""
    upw = units_per_window
    pad_r, pad_c = (-rows) % upw, (-cols) % upw
    index = F.pad(torch.arange(rows * cols).view(rows, cols), (0, pad_c, 0, pad_r), value=-1)
    windows = index.view((rows + pad_r) // upw, upw, (cols + pad_c) // upw, upw).permute(0, 2, 1, 3)
    windows = windows.reshape(-1, upw * upw)
    sizes = (windows >= 0).sum(1)
    classes = []
    for size in torch.unique(sizes).flip(0).tolist():
        chosen = windows[sizes == size]
        classes.append((size, chosen[chosen >= 0]))  # row-major keeps HF's in-window order
    return classes


def _window_unit_order(grids: Sequence[Grid], merge: int, units_per_window: int, device) -> tuple:
    """(unit order `[U]`, window sizes in units `[num_windows]`) of the size-sorted window order."""
    by_size: dict[int, list[torch.Tensor]] = {}
    counts: dict[int, int] = {}
    offset = 0
    for grid_t, grid_h, grid_w in grids:
        rows, cols = grid_h // merge, grid_w // merge
        frame_units = rows * cols
        starts = torch.arange(grid_t, device=device)[:, None] * frame_units + offset
        for size, units in _frame_windows(rows, cols, units_per_window):
            by_size.setdefault(size, []).append((starts + units.to(device)[None, :]).reshape(-1))
            counts[size] = counts.get(size, 0) + grid_t * units.numel() // size
        offset += grid_t * frame_units
    sizes = sorted(by_size, reverse=True)
    order = torch.cat([piece for size in sizes for piece in by_size[size]])
    window_sizes = torch.cat([torch.full((counts[size],), size) for size in sizes])
    return order, window_sizes


def _half_rotary(grids: Sequence[Grid], merge: int, inv_freq: torch.Tensor, device):
    """cos, sin `[P, D/2]` float32 in natural order: [h-angles, w-angles] per row (HF's halves)."""
    inv_freq = inv_freq.to(device).float()
    cos_parts, sin_parts = [], []
    for grid_t, grid_h, grid_w in grids:
        sub = torch.arange(merge, device=device)
        # Natural order within a frame: merge blocks row-major, then the m x m patches row-major.
        hpos = (torch.arange(grid_h // merge, device=device)[:, None, None, None] * merge + sub[:, None])
        wpos = (torch.arange(grid_w // merge, device=device)[None, :, None, None] * merge + sub)
        shape = (grid_h // merge, grid_w // merge, merge, merge)
        pos = torch.stack([hpos.expand(shape).reshape(-1), wpos.expand(shape).reshape(-1)], dim=-1)
        freqs = pos.float()[..., None] * inv_freq  # [h*w, 2, D/4], as HF
        freqs = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
        cos_parts.append(freqs.cos().repeat(grid_t, 1))
        sin_parts.append(freqs.sin().repeat(grid_t, 1))
    return torch.cat(cos_parts), torch.cat(sin_parts)


def _aligned_rows(table: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """The same `[P, n]` values as a view whose row stride is a multiple of `multiple` elements (the
    Triton window kernel reads cos/sin rows with vector loads only when the stride says they are
    aligned: n = 40 at 7B)."""
    width = _round_up(table.shape[1], multiple)
    if width == table.shape[1]:
        return table
    padded = table.new_zeros(table.shape[0], width)
    padded[:, :table.shape[1]] = table
    return padded[:, :table.shape[1]]


def build_layout(grids: Sequence[Grid], *, merge: int, units_per_window: int, inv_freq: torch.Tensor,
                 device: torch.device | str) -> VisionLayout:
    """All row orders, attention groups and rotary tables of one grid_thw list."""
    for grid_t, grid_h, grid_w in grids:
        if min(grid_t, grid_h, grid_w) < 1 or grid_h % merge or grid_w % merge:
            raise ValueError(f"grid {(grid_t, grid_h, grid_w)} must be positive with h, w divisible by {merge}")
    area = merge * merge
    unit_order, window_units = _window_unit_order(grids, merge, units_per_window, device)
    num_units = unit_order.numel()
    to_window = (unit_order[:, None] * area + torch.arange(area, device=device)).reshape(-1)
    to_natural = torch.empty_like(to_window)
    to_natural[to_window] = torch.arange(to_window.numel(), device=device)
    units_to_natural = torch.empty_like(unit_order)
    units_to_natural[unit_order] = torch.arange(num_units, device=device)
    cos, sin = _half_rotary(grids, merge, inv_freq, device)
    window_cu = F.pad(torch.cumsum(window_units * area, 0), (1, 0))
    grid_table = torch.tensor(grids)
    frame_sizes = torch.repeat_interleave(grid_table[:, 1] * grid_table[:, 2], grid_table[:, 0])
    frame_cu = F.pad(torch.cumsum(frame_sizes, 0), (1, 0))
    window = OrderPlan(plan_varlen_groups(window_cu, device), *(_aligned_rows(t[to_window]) for t in (cos, sin)))
    natural = OrderPlan(plan_varlen_groups(frame_cu, device), cos, sin)
    return VisionLayout(num_units * area, to_window, to_natural, units_to_natural, window, natural)


def canonical_grids(grid_thw: torch.Tensor | Sequence[Sequence[int]]) -> tuple[Grid, ...]:
    """grid_thw rows as int tuples, consecutive rows of equal (h, w) merged (exact: grids never interact)."""
    rows = torch.as_tensor(grid_thw).reshape(-1, 3).tolist()
    merged: list[list[int]] = []
    for grid_t, grid_h, grid_w in rows:
        if merged and merged[-1][1:] == [grid_h, grid_w]:
            merged[-1][0] += grid_t
        else:
            merged.append([grid_t, grid_h, grid_w])
    return tuple((int(t), int(h), int(w)) for t, h, w in merged)


def plan_chunks(grids: Sequence[Grid], max_patches_per_chunk: int) -> list[tuple[int, int, tuple[Grid, ...]]]:
    """Split at temporal-grid boundaries: [(patch_start, patch_stop, chunk grids)], each chunk at most
    `max_patches_per_chunk` patches unless one temporal grid alone is larger."""
    chunks, current, start, size = [], [], 0, 0
    for grid_t, grid_h, grid_w in grids:
        frame, left = grid_h * grid_w, grid_t
        while left:
            take = min(left, max(0, max_patches_per_chunk - size) // frame)
            if take == 0 and size == 0:
                take = 1  # a single temporal grid bigger than the budget is encoded alone
            if take == 0:
                chunks.append((start, start + size, canonical_grids(current)))
                current, start, size = [], start + size, 0
                continue
            current.append((take, grid_h, grid_w))
            size, left = size + take * frame, left - take
    if current:
        chunks.append((start, start + size, canonical_grids(current)))
    return chunks


# ----------------------------------------------------------------------------- the encoder
@dataclass(frozen=True)
class _BlockWeights:
    norm1: torch.Tensor
    norm2: torch.Tensor
    eps1: float
    eps2: float
    qkv: tuple[torch.Tensor, torch.Tensor]
    proj: tuple[torch.Tensor, torch.Tensor]
    gate_up: tuple[torch.Tensor, torch.Tensor]
    down: tuple[torch.Tensor, torch.Tensor]
    width: int  # intermediate width after padding


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@torch.no_grad()
def _fuse_mlp(mlp, multiple: int) -> tuple[tuple, tuple, int]:
    """Gate and up stacked into one `[2W, C]` weight, intermediate padded to W (zero rows / columns)."""
    inter, hidden = mlp.gate_proj.weight.shape
    width = _round_up(inter, max(multiple, 1))
    weight = mlp.gate_proj.weight.new_zeros(2 * width, hidden)
    bias = mlp.gate_proj.weight.new_zeros(2 * width)
    for slot, linear in enumerate((mlp.gate_proj, mlp.up_proj)):
        weight[slot * width: slot * width + inter] = linear.weight
        if linear.bias is not None:
            bias[slot * width: slot * width + inter] = linear.bias
    down = mlp.down_proj.weight.new_zeros(hidden, width)
    down[:, :inter] = mlp.down_proj.weight
    return (weight, bias), (down, mlp.down_proj.bias), width


class FastQwen25Vision:
    """HF Qwen2.5-VL vision tower with a batched forward; `encode` equals `hf_visual(...).pooler_output`.

    Build it after the tower has its final device, dtype and weights (the MLP is copied, fused and
    padded: about 0.85 GB extra in bf16 at 7B; every other weight is shared).

    Args:
        hf_visual: a `Qwen2_5_VisionTransformerPretrainedModel`.
        compile: torch.compile the elementwise pieces; None = on CUDA when Triton is importable.
        mlp_multiple: pad the MLP intermediate width to a multiple of this (1: no padding).
        window_backends / full_backends: SDPA backend names in priority order for the two block kinds
            (default on CUDA when `spava_kernels` imports: ["triton"], the Triton window kernel for
            windows and a flash kernel with head_dim split 64 + 16 for full blocks: the Gluon one on
            H100 / H200, the Triton one elsewhere; PyTorch's SDPA order otherwise and wherever a kernel
            cannot take the shapes).
        use_flash: flash-attn varlen kernel (None: when importable).
        max_cached_layouts: grid_thw layouts kept (least recently used dropped).
        fuse_window_rotary: where window blocks run the Triton window kernel, it applies the rotary to
            q and k as it loads them (no separate rotary pass over q and k; the same float32 formula).
        fuse_swiglu: run gate/up and SwiGLU as one GEMM (CUDA sm_90, fp16/bf16: the Gluon
            `spava_kernels.swiglu_gemm_sm90`, else the Triton `swiglu_gemm`) instead of cuBLAS + a
            SwiGLU pass; None: where it can run.
        full_kernel_config / swiglu_config: launch `Config`s of the flash kernel (full blocks) and the
            SwiGLU GEMM; a `Config` of the Gluon sm_90 modules (`flash_attention_sm90`,
            `swiglu_gemm_sm90`) picks that kernel; None: the defaults (benchmarks compare others).
    """

    def __init__(self, hf_visual, *, compile: bool | None = None, mlp_multiple: int = 64,
                 window_backends: Sequence[str] | None = None, full_backends: Sequence[str] | None = None,
                 use_flash: bool | None = None, max_cached_layouts: int = 4, fuse_window_rotary: bool = True,
                 fuse_swiglu: bool | None = None, full_kernel_config=None, swiglu_config=None):
        cfg = hf_visual.config
        self.hf_visual = hf_visual
        self.merge = cfg.spatial_merge_size
        self.units_per_window = cfg.window_size // cfg.spatial_merge_size // cfg.patch_size
        self.full_block_indexes = frozenset(cfg.fullatt_block_indexes)
        self.num_heads = cfg.num_heads
        self.hidden = cfg.hidden_size
        self.scale = (cfg.hidden_size // cfg.num_heads) ** -0.5
        weight = hf_visual.patch_embed.proj.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.patch_weight = weight.reshape(weight.shape[0], -1)  # Conv3d with stride == kernel is a GEMM
        self.blocks = tuple(self._block_weights(block, mlp_multiple) for block in hf_visual.blocks)
        self.merger = hf_visual.merger
        self.inv_freq = hf_visual.rotary_pos_emb.inv_freq
        if compile is None:
            compile = self.device.type == "cuda" and importlib.util.find_spec("triton") is not None
        self.is_compiled = bool(compile)
        self.ops = _make_ops(self.is_compiled)
        if self.device.type == "cuda" and triton_windows_available():
            # Windows: one Triton launch over all windows reads q/k/v once (batched SDPA per window
            # length ran at ~40% of the copy rate). Full blocks: the flash kernels do no head_dim
            # padding (cuDNN pads 80 to 128; H200, 1440p grids: Gluon 504, Triton 419, cuDNN 374 TFLOP/s).
            # Shapes a kernel cannot take fall through to PyTorch's SDPA order.
            window_backends = ["triton"] if window_backends is None else window_backends
            full_backends = ["triton"] if full_backends is None else full_backends
        self.backends = {"window": window_backends, "natural": full_backends}
        self.use_flash = use_flash
        self.kernel_configs = {"window": None, "natural": full_kernel_config}
        self.swiglu_config = swiglu_config
        self.fuse_window_rotary = fuse_window_rotary
        can_fuse_swiglu = (self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16)
                           and triton_windows_available() and torch.cuda.get_device_capability(self.device)[0] >= 9
                           and (self.hidden * weight.element_size()) % 16 == 0)
        if fuse_swiglu and not can_fuse_swiglu:
            raise ValueError("fuse_swiglu=True needs CUDA sm_90+, fp16/bf16 weights and spava_kernels importable")
        self.fuse_swiglu = can_fuse_swiglu if fuse_swiglu is None else fuse_swiglu
        if self.fuse_swiglu:  # resolved once here, not per block
            from spava_kernels.dispatch import swiglu_gemm

            self._swiglu_gemm = swiglu_gemm
        self.max_cached_layouts = max_cached_layouts
        self._layouts: OrderedDict = OrderedDict()
        widest = max(3 * self.hidden, *(2 * block.width for block in self.blocks))
        self.max_patches_per_chunk = max(1, (2 ** 31 - 1) // widest)

    @staticmethod
    def _block_weights(block, mlp_multiple: int) -> _BlockWeights:
        gate_up, down, width = _fuse_mlp(block.mlp, mlp_multiple)
        attn = block.attn
        return _BlockWeights(block.norm1.weight, block.norm2.weight, block.norm1.variance_epsilon,
                             block.norm2.variance_epsilon, (attn.qkv.weight, attn.qkv.bias),
                             (attn.proj.weight, attn.proj.bias), gate_up, down, width)

    def layout(self, grid_thw) -> VisionLayout:
        """The cached layout of `grid_thw` (`[G, 3]` tensor or rows)."""
        key = canonical_grids(grid_thw)
        if key in self._layouts:
            self._layouts.move_to_end(key)
            return self._layouts[key]
        layout = build_layout(key, merge=self.merge, units_per_window=self.units_per_window,
                              inv_freq=self.inv_freq, device=self.device)
        self._layouts[key] = layout
        while len(self._layouts) > self.max_cached_layouts:
            self._layouts.popitem(last=False)
        return layout

    @torch.inference_mode()
    def encode(self, pixel_rows: torch.Tensor, grid_thw) -> torch.Tensor:
        """Pixel rows `[P, 3*2*14*14]` in HF's patch order, grid_thw `[G, 3]` -> merged `[P/4, out_hidden]`."""
        return self.encode_chunked(pixel_rows, grid_thw, self.max_patches_per_chunk)

    @torch.inference_mode()
    def encode_chunked(self, pixel_rows: torch.Tensor, grid_thw, max_patches_per_chunk: int) -> torch.Tensor:
        """`encode` in pieces of at most `max_patches_per_chunk` patches (whole temporal grids), same result.

        Pieces are also kept under `self.max_patches_per_chunk`, so that no intermediate has 2**31
        elements or more (compiled kernels then index in int32, about twice as fast).
        """
        grids = canonical_grids(grid_thw)
        chunks = plan_chunks(grids, min(max_patches_per_chunk, self.max_patches_per_chunk))
        if not chunks or chunks[-1][1] != pixel_rows.shape[0]:
            raise ValueError(f"grid_thw {grids} does not match {pixel_rows.shape[0]} pixel rows")
        if len(chunks) == 1:
            return self._encode_once(pixel_rows, grids)
        area = self.merge * self.merge
        out = None
        for start, stop, chunk_grids in chunks:
            piece = self._encode_once(pixel_rows[start:stop], chunk_grids)
            if out is None:
                out = piece.new_empty(pixel_rows.shape[0] // area, piece.shape[1])
            out[start // area: stop // area] = piece
        return out

    def _encode_once(self, pixel_rows: torch.Tensor, grids: tuple[Grid, ...]) -> torch.Tensor:
        layout = self.layout(grids)
        x = F.linear(pixel_rows.to(self.device, self.dtype), self.patch_weight)
        return self._run_blocks(x, layout)

    def _run_blocks(self, x: torch.Tensor, layout: VisionLayout) -> torch.Tensor:
        """Blocks and merger on patch embeddings `[P, C]` (natural order) -> `[P/4, out]` natural order."""
        order = "natural"
        first = self.blocks[0]
        normed = self.ops.rms_norm(x, first.norm1, first.eps1)
        for index, weights in enumerate(self.blocks):
            wanted = "natural" if index in self.full_block_indexes else "window"
            if wanted != order:
                perm = layout.to_natural if wanted == "natural" else layout.to_window
                x, normed, order = x.index_select(0, perm), normed.index_select(0, perm), wanted
            if index + 1 < len(self.blocks):
                following = (self.blocks[index + 1].norm1, self.blocks[index + 1].eps1)
            else:
                following = (self.merger.ln_q.weight, self.merger.ln_q.variance_epsilon)
            x, normed = self._block(x, normed, weights, getattr(layout, order), order, following)
        merged = self.merger.mlp(normed.view(-1, normed.shape[1] * self.merge * self.merge))
        if order == "window":
            merged = merged.index_select(0, layout.units_to_natural)
        return merged

    def _block(self, x, normed, w: _BlockWeights, plan: OrderPlan, order: str, following):
        """One ViT block on `[P, C]` rows; returns (x, next norm of x) with the following norm's weight."""
        attn = self._attend(F.linear(normed, *w.qkv), plan, order)
        x, normed = self.ops.add_rms_norm(x, F.linear(attn.reshape(x.shape[0], -1), *w.proj), w.norm2, w.eps2)
        if self.fuse_swiglu:
            hidden = self._swiglu_gemm(normed, *w.gate_up, w.width, impl="triton", config=self.swiglu_config)
        else:
            hidden = self.ops.swiglu(F.linear(normed, *w.gate_up), w.width)
        return self.ops.add_rms_norm(x, F.linear(hidden, *w.down), *following)

    def _attend(self, qkv: torch.Tensor, plan: OrderPlan, order: str) -> torch.Tensor:
        """Rotary and attention of one block: qkv `[N, 3C]` -> `[N, H, D]`."""
        groups, backends = plan.groups, self.backends[order]
        q, k, v = qkv.view(qkv.shape[0], 3, self.num_heads, -1).unbind(1)
        kernel = triton_kernel_for(q, v, backends, groups.max_seqlen) if self.fuse_window_rotary else None
        if kernel is not None and groups.max_seqlen <= TRITON_MAX_SEQLEN and groups.num_tokens == q.shape[0]:
            # the window kernel rotates q and k on load: one pass over q and k fewer per window block
            return kernel(q, k, v, groups.cu_seqlens, groups.max_seqlen, self.scale, impl="triton",
                          rotary=(plan.cos, plan.sin))
        q, k, v = self.ops.rotary_qkv(qkv, plan.cos, plan.sin, self.num_heads)
        return varlen_attention(q, k, v, None, scale=self.scale, groups=groups, backends=backends,
                                use_flash=self.use_flash, kernel_config=self.kernel_configs[order])
