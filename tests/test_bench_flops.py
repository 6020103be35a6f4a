"""The benchmark's FLOP count: the patch embedding once per patch, windows as the tower runs them."""

from __future__ import annotations

from types import SimpleNamespace

from spava.bench.flops import vision_flops, window_pairs


def _vision(depth: int, full=(0,)):
    return SimpleNamespace(hidden_size=32, intermediate_size=64, patch_size=14, temporal_patch_size=2,
                           window_size=112, spatial_merge_size=2, depth=depth, fullatt_block_indexes=list(full),
                           out_hidden_size=64)


def test_window_pairs_count_the_edge_windows_as_they_are():
    assert window_pairs(8, 8, 8, 2) == 64 ** 2
    assert window_pairs(10, 8, 8, 2) == 64 ** 2 + 16 ** 2
    assert window_pairs(18, 20, 8, 2) == sum((h * w) ** 2 for h in (8, 8, 2) for w in (8, 8, 4))


def test_one_more_block_adds_one_block_of_work_and_no_patch_embedding():
    grid = (3, 10, 12)
    added = vision_flops(_vision(3), grid) - vision_flops(_vision(2), grid)
    patches = 3 * 10 * 12
    hidden, inter = 32, 64
    per_block = 2 * patches * (3 * hidden * hidden + hidden * hidden + 3 * hidden * inter)
    window_attention = 4 * hidden * 3 * window_pairs(10, 12, 8, 2)
    assert added == per_block + window_attention


def test_qwen3_vl_tower_counts_full_blocks_and_one_merger_per_deepstack_layer():
    from spava.models.qwen3_vl.presets import qwen3_vl_config

    vision = qwen3_vl_config("8b").vision_config
    grid = (4, 90, 160)
    patches, hidden, inter, width = 4 * 90 * 160, 1152, 4304, 4 * 1152
    linear = 2 * patches * (1536 * hidden + 27 * (4 * hidden * hidden + 2 * hidden * inter))
    attention = 4 * hidden * 4 * (90 * 160) ** 2 * 27
    mergers = 4 * (2 * (patches // 4) * width * width + 2 * (patches // 4) * width * 4096)
    assert vision_flops(vision, grid) == linear + attention + mergers
    assert vision_flops(vision, grid, 1) * 4 == vision_flops(vision, grid)
