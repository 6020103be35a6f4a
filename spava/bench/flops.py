"""FLOPs a method must do for one prefill, per rank (for achieved TFLOP/s and the roofline).

Counted: the LLM's linear layers over the rank's local tokens, attention (4 * head_dim FLOPs per
query-key pair and query head: QK^T and PV), and the vision tower. Not counted: norms, RoPE,
scoring / top-k, communication.
"""

from __future__ import annotations

from spava.attention.config import num_selected, resolve_passing_len
from spava.plan.sequence import ROLE_CHUNK


def _tri(n: int) -> int:
    return n * (n + 1) // 2


def _head_dim(text_config) -> int:
    """The config's head_dim (Qwen3: 128 also where hidden / heads is 80), else hidden / heads."""
    return getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads


def linear_flops_per_token(text_config) -> int:
    hidden, inter = text_config.hidden_size, text_config.intermediate_size
    head_dim = _head_dim(text_config)
    q_out, kv_out = text_config.num_attention_heads * head_dim, text_config.num_key_value_heads * head_dim
    per_layer = hidden * q_out + 2 * hidden * kv_out + q_out * hidden + 3 * hidden * inter
    return 2 * per_layer * text_config.num_hidden_layers


def _approx_pairs(method_name, plan, passing_len: int, round_to: int) -> int:
    """Query-key pairs of the context rows of star / apb / spava on this rank."""
    chunks = [plan.segments[i] for i in plan.find(ROLE_CHUNK)]
    anchor_segments = [plan.segments[i] for i in plan.find("anchor")]
    # spava shards the anchor rows but every chunk still attends to the whole anchor
    anchor = plan.anchor_len if anchor_segments or method_name == "spava" else 0
    pairs = sum(_tri(seg.stop) - _tri(seg.start) for seg in anchor_segments)
    if method_name == "star":
        return _tri(anchor + chunks[0].length) if anchor else _tri(chunks[0].length)
    lengths = [end - start for start, end in plan.chunks]
    for chunk in chunks:
        if method_name == "apb":
            num_passing = sum(num_selected(passing_len, lengths[c] - (anchor if c == 0 else 0), round_to)
                              for c in range(chunk.chunk_id))
        else:
            num_passing = sum(num_selected(passing_len, lengths[c], round_to) for c in range(chunk.chunk_id))
        pairs += chunk.length * (anchor + num_passing) + _tri(chunk.length)
    return pairs


def attention_pair_heads(method, plan, num_heads: int, layer_idx: int = 0) -> int:
    """Query-key pairs times query heads that `method` computes on this rank in one layer."""
    name = method.name
    if name == "ulysses":  # every rank attends the whole prompt with its share of the heads
        share = num_heads // plan.world_size + (1 if plan.rank < num_heads % plan.world_size else 0)
        return share * _tri(plan.num_tokens)
    if method.is_exact:  # each local row attends to every earlier token once
        return num_heads * sum(end * (end + 1) // 2 - start * (start + 1) // 2 for start, end in plan.global_ranges())
    cfg = method.config
    passing = resolve_passing_len(cfg, plan.context_len, layer_idx)
    owned = sum(end - start for start, end in plan.owned if start < plan.context_len)
    query = plan.num_query_tokens * owned + (_tri(plan.num_query_tokens) if plan.rank == plan.decode_rank else 0)
    return num_heads * (_approx_pairs(name, plan, passing, cfg.round_to) + query)


def llm_prefill_flops(method, plan, text_config) -> int:
    head_dim = _head_dim(text_config)
    layers = text_config.num_hidden_layers
    attention = sum(attention_pair_heads(method, plan, text_config.num_attention_heads, i) for i in range(layers))
    return plan.num_local_tokens * linear_flops_per_token(text_config) + 4 * head_dim * attention


def window_pairs(grid_h: int, grid_w: int, window: int, merge: int) -> int:
    """Query-key pairs of one temporal grid's window attention, as the tower runs it.

    Windows are `window` x `window` patches aligned to the grid's origin (merge groups never split);
    those at the bottom and right edges are smaller, and each attends only within itself.
    """
    rows = [min(window, grid_h - start) for start in range(0, grid_h, window)]
    cols = [min(window, grid_w - start) for start in range(0, grid_w, window)]
    return sum((h * w) ** 2 for h in rows for w in cols)


def vision_flops(vision_config, grid_thw: tuple[int, int, int], num_grids: int | None = None) -> int:
    """FLOPs of the ViT over `num_grids` temporal grids (default all) of one video.

    The patch embedding runs once per patch (not once per block). Qwen2.5-VL's tower (a config with
    `window_size`) has window blocks, counted by the pairs of the windows they really attend (edge
    windows are smaller), full blocks and a SwiGLU MLP; Qwen3-VL's has full blocks only, a two-matrix
    MLP and one merger per DeepStack layer besides the final one.
    """
    grid_t, grid_h, grid_w = grid_thw
    grids = grid_t if num_grids is None else num_grids
    patches = grids * grid_h * grid_w
    hidden, inter = vision_config.hidden_size, vision_config.intermediate_size
    is_windowed = hasattr(vision_config, "window_size")
    patch_dim = 3 * vision_config.temporal_patch_size * vision_config.patch_size ** 2
    per_block = hidden * 3 * hidden + hidden * hidden + (3 if is_windowed else 2) * hidden * inter
    linear = 2 * patches * (patch_dim * hidden + per_block * vision_config.depth)
    full_pairs = grids * (grid_h * grid_w) ** 2
    if is_windowed:
        window = vision_config.window_size // vision_config.patch_size  # patches per window side
        windows = grids * window_pairs(grid_h, grid_w, window, vision_config.spatial_merge_size)
        num_full = len(vision_config.fullatt_block_indexes)
        attention = 4 * hidden * (full_pairs * num_full + windows * (vision_config.depth - num_full))
    else:
        attention = 4 * hidden * full_pairs * vision_config.depth
    merge_area = vision_config.spatial_merge_size ** 2
    merged, width = patches // merge_area, merge_area * hidden
    num_mergers = 1 + len(getattr(vision_config, "deepstack_visual_indexes", ()))
    merger = num_mergers * (2 * merged * width * width + 2 * merged * width * vision_config.out_hidden_size)
    return linear + attention + merger


def internvl_vision_flops(vision_config, text_config, num_tiles: int, downsample_ratio: float = 0.5) -> int:
    """FLOPs of InternViT + pixel shuffle + projector over `num_tiles` tiles.

    Per tile: the patch embedding once per patch, every layer's linear maps and full attention over
    the patches and the class token, then the projector MLP on the merged tokens.
    """
    image_size = vision_config.image_size[0] if isinstance(vision_config.image_size, (list, tuple)) \
        else vision_config.image_size
    patch = vision_config.patch_size[0] if isinstance(vision_config.patch_size, (list, tuple)) \
        else vision_config.patch_size
    num_patches = (image_size // patch) ** 2
    num_tokens = num_patches + 1  # the class token
    hidden, inter = vision_config.hidden_size, vision_config.intermediate_size
    per_layer = 2 * num_tokens * (4 * hidden * hidden + 2 * hidden * inter) + 4 * hidden * num_tokens ** 2
    embedding = 2 * num_patches * 3 * patch * patch * hidden
    merged = round(num_patches * downsample_ratio ** 2)
    merged_width = round(hidden / downsample_ratio ** 2)
    text_hidden = text_config.hidden_size
    projector = 2 * merged * (merged_width * text_hidden + text_hidden * text_hidden)
    return num_tiles * (embedding + per_layer * vision_config.num_hidden_layers + projector)


def model_vision_flops(config, grid_thw: tuple[int, int, int], num_grids: int | None = None) -> int:
    """FLOPs of a model's vision tower (its HF config) over `num_grids` temporal grids of one video:
    InternVL3's InternViT per 448x448 tile (a tile per grid row t), else the Qwen towers."""
    if getattr(config, "model_type", "") == "internvl":
        num_tiles = grid_thw[0] if num_grids is None else num_grids
        return internvl_vision_flops(config.vision_config, config.text_config, num_tiles, config.downsample_ratio)
    return vision_flops(config.vision_config, grid_thw, num_grids)
