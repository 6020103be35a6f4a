"""spava's Qwen2.5-VL M-RoPE positions vs transformers' get_rope_index and an independent reference.

``Qwen2_5_VLModel.get_rope_index`` only reads ``self.config``. We call it unbound on a
stand-in object that holds a default ``Qwen2_5_VLConfig``, so no weights are built.

transformers 5.17 differs from Qwen's reference rules in two places (see spava's
rope.py). ``is_transformers5_compat=True`` must equal transformers on every case. The
default mode must equal transformers wherever the two rules agree, and must equal a
slow per-token reference of Qwen's rules everywhere.
"""

from __future__ import annotations

import time

import pytest
import torch

from spava.models.qwen2_5_vl.rope import get_mrope_position_ids

modeling = pytest.importorskip("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl")
from transformers import Qwen2_5_VLConfig

TOKENS_PER_SECOND = 2  # Qwen2.5-VL checkpoints' vision_config.tokens_per_second
MERGE = 2
CONFIG = Qwen2_5_VLConfig(vision_config={"tokens_per_second": TOKENS_PER_SECOND, "spatial_merge_size": MERGE})
IMAGE, VIDEO = CONFIG.image_token_id, CONFIG.video_token_id
START, END = CONFIG.vision_start_token_id, CONFIG.vision_end_token_id
TEXT = 1000  # any ordinary token id


class _HFRopeHost:
    """Just enough of Qwen2_5_VLModel to run its get_rope_index."""

    get_rope_index = modeling.Qwen2_5_VLModel.get_rope_index
    get_vision_position_ids = modeling.Qwen2_5_VLModel.get_vision_position_ids

    def __init__(self):
        self.config = CONFIG


def _build_ids(parts):
    """parts: ints = that many text tokens; ("video"|"image", (t, h, w)) = a vision item."""
    ids = []
    for part in parts:
        if isinstance(part, int):
            ids += [TEXT + i for i in range(part)]
        else:
            kind, (t, h, w) = part
            ids += [START] + [VIDEO if kind == "video" else IMAGE] * (t * h * w // MERGE**2) + [END]
    return torch.tensor(ids)


def _grids(parts, kind):
    grids = [list(p[1]) for p in parts if not isinstance(p, int) and p[0] == kind]
    return torch.tensor(grids) if grids else None


def _hf(parts, seconds):
    ids = _build_ids(parts)[None]
    types = torch.zeros_like(ids)
    types[ids == IMAGE], types[ids == VIDEO] = 1, 2
    seconds = torch.tensor(seconds, dtype=torch.float32) if seconds is not None else None
    pos, delta = _HFRopeHost().get_rope_index(
        ids, types, image_grid_thw=_grids(parts, "image"), video_grid_thw=_grids(parts, "video"),
        second_per_grid_ts=seconds,
    )
    return pos[:, 0], int(delta)


def _ours(parts, seconds, is_compat):
    return get_mrope_position_ids(
        _build_ids(parts), _grids(parts, "video"), _grids(parts, "image"),
        torch.tensor(seconds, dtype=torch.float32) if seconds is not None else None,
        spatial_merge_size=MERGE, tokens_per_second=TOKENS_PER_SECOND,
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START,
        is_transformers5_compat=is_compat,
    )


def _slow_reference(parts, seconds):
    """Qwen's rules, one token at a time: text continues from max+1; t ids = int(f32(i * s * tps))."""
    positions, next_pos, video_index = [], 0, 0
    for part in parts:
        if isinstance(part, int):
            positions += [(next_pos + i,) * 3 for i in range(part)]
            next_pos += part
            continue
        kind, (t, h, w) = part
        positions.append((next_pos,) * 3)  # <|vision_start|>
        next_pos += 1
        second = torch.tensor(seconds[video_index] if kind == "video" and seconds else 1.0, dtype=torch.float32)
        for i in range(t):
            temporal = int(torch.tensor(float(i)) * second * TOKENS_PER_SECOND) if kind == "video" else 0
            for j in range(h // MERGE):
                for k in range(w // MERGE):
                    positions.append((next_pos + temporal, next_pos + j, next_pos + k))
        video_index += kind == "video"
        next_pos = max(max(p) for p in positions) + 1
        positions.append((next_pos,) * 3)  # <|vision_end|>
        next_pos += 1
    pos = torch.tensor(positions).T
    return pos, int(pos.max()) + 1 - pos.shape[1]


CASES = {
    "text_only": ([12], None),
    "one_video_several_grids_fractional": ([5, ("video", (6, 4, 6)), 7], [0.5]),
    "one_video_seconds_1_5": ([3, ("video", (5, 8, 12)), 4], [1.5]),
    "one_video_seconds_2": ([3, ("video", (4, 6, 10)), 4], [2.0]),
    "one_image": ([4, ("image", (1, 14, 20)), 6], None),
    "image_then_video": ([2, ("image", (1, 6, 10)), 3, ("video", (3, 10, 6)), 5], [1.0]),
    "two_videos_odd_grids": ([1, ("video", (3, 2, 18)), 2, ("video", (7, 22, 2)), 3], [2.0, 18.75]),
    "video_at_very_start": ([("video", (2, 8, 8)), 3], [1.0]),
}
# Where Qwen's rules and transformers 5.17 agree: integer seconds and a short time axis.
AGREEING = {"text_only", "one_image", "image_then_video", "video_at_very_start"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_compat_mode_equals_transformers(name):
    parts, seconds = CASES[name]
    expected, expected_delta = _hf(parts, seconds)
    ours, delta = _ours(parts, seconds, is_compat=True)
    assert ours.dtype == torch.int64 and ours.shape == expected.shape
    assert torch.equal(ours, expected)
    assert delta == expected_delta


@pytest.mark.parametrize("name", sorted(CASES))
def test_default_mode_equals_slow_reference(name):
    parts, seconds = CASES[name]
    expected, expected_delta = _slow_reference(parts, seconds)
    ours, delta = _ours(parts, seconds, is_compat=False)
    assert torch.equal(ours, expected)
    assert delta == expected_delta


@pytest.mark.parametrize("name", sorted(AGREEING))
def test_default_mode_equals_transformers_where_rules_agree(name):
    parts, seconds = CASES[name]
    assert torch.equal(_ours(parts, seconds, is_compat=False)[0], _hf(parts, seconds)[0])


def test_qwen_docstring_example_interval_50():
    # Qwen's own example: 3 temporal grids, 2x2 merged tokens, 25 tokens/s, 2 s per grid.
    ids = torch.tensor([START] + [VIDEO] * 12 + [END] + [TEXT] * 2)
    pos, delta = get_mrope_position_ids(
        ids, [[3, 4, 4]], None, [2.0], spatial_merge_size=2, tokens_per_second=25,
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START,
    )
    assert (pos[0, 1:13] - 1).tolist() == [0] * 4 + [50] * 4 + [100] * 4
    assert (pos[1, 1:13] - 1).tolist() == [0, 0, 1, 1] * 3
    assert (pos[2, 1:13] - 1).tolist() == [0, 1, 0, 1] * 3
    assert pos[:, 13].tolist() == [102] * 3  # <|vision_end|> = max + 1
    assert delta == 104 + 1 - 16


def test_long_video_is_fast():
    # 300 temporal grids of 51x91 merged tokens: 1.39M vision tokens.
    grid = (300, 102, 182)
    ids = _build_ids([30, ("video", grid), 20])
    start = time.perf_counter()
    pos, delta = get_mrope_position_ids(
        ids, [grid], None, [1.0], spatial_merge_size=2, tokens_per_second=2,
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START,
    )
    assert time.perf_counter() - start < 5.0
    assert pos.shape == (3, ids.numel())
    assert int(pos[0, -1]) == 31 + 299 * 2 + 1 + 20  # text after the video continues from max + 1
    assert delta == int(pos.max()) + 1 - ids.numel()


def test_pad_count_mismatch_raises():
    ids = _build_ids([2, ("video", (2, 4, 4)), 2])
    with pytest.raises(ValueError, match="pad tokens"):
        get_mrope_position_ids(
            ids, [[2, 4, 6]], None, None, spatial_merge_size=2, tokens_per_second=2,
            image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START,
        )


def test_grid_count_mismatch_raises():
    ids = _build_ids([2, ("video", (2, 4, 4)), 2])
    with pytest.raises(ValueError, match="video grids"):
        get_mrope_position_ids(
            ids, [[2, 4, 4], [2, 4, 4]], None, None, spatial_merge_size=2, tokens_per_second=2,
            image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START,
        )


def test_documented_divergence_from_transformers_5_17():
    # 0.5 s per grid: transformers truncates the seconds to 0, so every temporal grid gets the same id.
    parts, seconds = CASES["one_video_several_grids_fractional"]
    hf_pos, _ = _hf(parts, seconds)
    ours, _ = _ours(parts, seconds, is_compat=False)
    video = _build_ids(parts) == VIDEO
    assert hf_pos[0, video].unique().numel() == 1
    assert ours[0, video].unique().tolist() == [6 + i for i in range(6)]  # int(i * 0.5 * 2) = i
