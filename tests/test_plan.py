"""Sequence plans: every token lands where the method says, balanced, sliced from global tensors."""

from __future__ import annotations

import pytest
import torch

from spava.attention.config import AttentionConfig, num_selected, resolve_anchor_len, resolve_passing_len
from spava.attention.apb import plan_apb
from spava.attention.registry import approximate_methods, available_methods, exact_methods, get_method
from spava.attention.ring import plan_ring_schedule, plan_zigzag
from spava.attention.spava import anchor_shard, anchor_shard_len, plan_spava
from spava.attention.ulysses import plan_head_shards
from spava.plan.sequence import ROLE_ANCHOR, ROLE_QUERY, balanced_bounds

SP_METHODS = [m for m in available_methods() if m != "full"]
SHAPES = [(203, 7), (331, 1), (1000, 13), (4099, 0)]


def _plans(method: str, num_tokens: int, num_query: int, world_size: int, **cfg):
    config = AttentionConfig(method=method, round_to=1, anchor_len=cfg.pop("anchor_len", 16), **cfg)
    impl = get_method(config)
    return [impl.plan(num_tokens, num_query, world_size, rank) for rank in range(world_size)]


@pytest.mark.parametrize("method", SP_METHODS)
@pytest.mark.parametrize("num_tokens,num_query", SHAPES)
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_owned_tokens_tile_the_prompt_exactly_once(method, num_tokens, num_query, world_size):
    plans = _plans(method, num_tokens, num_query, world_size)
    counts = torch.zeros(num_tokens, dtype=torch.long)
    for plan in plans:
        for start, stop in plan.owned:
            counts[start:stop] += 1
    assert torch.equal(counts, torch.ones_like(counts))


@pytest.mark.parametrize("method", SP_METHODS)
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_local_order_is_increasing_and_held_tokens_cover_prompt(method, world_size):
    plans = _plans(method, 1000, 13, world_size)
    held = torch.zeros(1000, dtype=torch.long)
    for plan in plans:
        ids = plan.local_token_ids()
        assert ids.numel() == plan.num_local_tokens
        assert bool((ids[1:] > ids[:-1]).all()), "local order must follow global order"
        held[ids] += 1
    assert bool((held >= 1).all())
    if method in exact_methods():
        assert bool((held == 1).all()), "exact methods hold every token once"


@pytest.mark.parametrize("method", approximate_methods())
@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_anchor_and_query_placement(method, world_size):
    """The query is replicated; star / apb replicate the anchor on ranks > 0; spava shards it."""
    plans = _plans(method, 1000, 13, world_size)
    shares = []
    for plan in plans:
        queries = [plan.segments[i] for i in plan.find(ROLE_QUERY)]
        assert [(s.start, s.stop) for s in queries] == [(987, 1000)]
        anchors = [(plan.segments[i].start, plan.segments[i].stop) for i in plan.find(ROLE_ANCHOR)]
        if method == "spava":
            shares += anchors
            assert all(stop - start <= anchor_shard_len(plan.anchor_len, world_size) for start, stop in anchors)
        elif plan.rank > 0:
            assert anchors == [(0, plan.anchor_len)]
    if method == "spava":  # the shares tile the anchor once, in rank order
        assert [r for share in shares for r in range(*share)] == list(range(plans[0].anchor_len))
    assert plans[0].decode_rank == 0


@pytest.mark.parametrize("world_size", [2, 3, 4, 8])
def test_spava_zigzag_is_balanced(world_size):
    plans = _plans("spava", 148_537, 11, world_size)
    sizes = [p.num_local_tokens for p in plans]
    assert max(sizes) - min(sizes) <= 2
    for plan in plans:
        chunk_ids = [s.chunk_id for s in plan.segments if s.chunk_id >= 0]
        assert chunk_ids == [plan.rank, 2 * world_size - 1 - plan.rank]


def test_zigzag_ring_causal_work_is_balanced():
    world_size, num_tokens = 4, 100_003
    plans = [plan_zigzag(num_tokens, 0, world_size, r) for r in range(world_size)]
    work = []
    for plan in plans:  # causal pairs of each local row = its global position + 1
        ids = plan.local_token_ids().double()
        work.append(float((ids + 1).sum()))
    assert max(work) / min(work) < 1.0001


def test_slice_local_takes_positions_from_the_global_tensor():
    positions = torch.randint(0, 500, (3, 777))
    embeds = torch.randn(777, 5)
    for plan in _plans("spava", 777, 9, 3):
        ids = plan.local_token_ids()
        assert torch.equal(plan.slice_local(positions, dim=1), positions[:, ids])
        assert torch.equal(plan.slice_local(embeds), embeds[ids])
    with pytest.raises(ValueError, match="expects 777"):
        plan.slice_local(torch.zeros(776))


def test_spava_sizes_follow_the_paper_defaults():
    config = get_method(AttentionConfig(method="spava")).config  # the method fills in its defaults
    context_len = 131_040
    assert resolve_anchor_len(config, context_len) == 2048
    assert resolve_passing_len(config, context_len) == 1024
    assert num_selected(1024, 16_124, 128) == 1024
    assert num_selected(1024, 900, 128) == 896
    plans = [get_method(config).plan(131_072, 32, 4, r) for r in range(4)]
    assert {p.num_local_tokens for p in plans} == {2048 // 4 + 2 * 16_124 + 32}  # anchor sharded
    assert anchor_shard(2048, 4, 3) == (1536, 2048)


def test_each_method_owns_its_default_passing_ratio():
    assert get_method("spava").config.passing_ratio == 1 / 128
    assert get_method("apb").config.passing_ratio == 1 / 64
    assert get_method("star").config.passing_ratio is None  # passes nothing
    assert get_method(AttentionConfig(method="apb", passing_ratio=0.25)).config.passing_ratio == 0.25
    assert resolve_passing_len(get_method("apb").config, 131_040) == 2048
    with pytest.raises(ValueError, match="get_method"):  # a raw config has no method default to fall back on
        resolve_passing_len(AttentionConfig(method="apb"), 131_040)


def test_passing_schedule_is_per_layer():
    config = get_method(AttentionConfig(method="spava", passing_schedule=[1.0, 0.5, 0.0])).config
    assert [resolve_passing_len(config, 131_040, layer) for layer in range(3)] == [1024, 512, 0]
    with pytest.raises(ValueError, match="one multiplier per decoder layer"):
        resolve_passing_len(config, 131_040, 3)


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: plan_spava(40, 4, 4, 0, anchor_len=30), "fewer than 8 tokens"),
        (lambda: plan_apb(100, 4, 4, 0, anchor_len=30), "does not fit"),
        (lambda: plan_zigzag(7, 0, 4, 0), "cannot fill 8 chunks"),
        (lambda: get_method("ring").plan(3, 0, 4, 0), "cannot be split over 4 ranks"),
        (lambda: get_method("full").plan(10, 0, 2, 0), "runs on one rank"),
        (lambda: get_method("star").plan(0, 0, 1, 0), "empty"),
        (lambda: get_method("spava").plan(10, 11, 1, 0), "num_query_tokens"),
        (lambda: plan_head_shards(2, 1, 4), "fewer ranks"),
        (lambda: get_method("nope"), "unknown attention method"),
        (lambda: AttentionConfig(pool_window=4), "pool_window"),
        (lambda: AttentionConfig(anchor_ratio=2.0), "anchor_ratio"),
    ],
)
def test_short_or_bad_inputs_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_balanced_bounds():
    assert balanced_bounds(10, 21, 4) == ((10, 13), (13, 16), (16, 19), (19, 21))
    assert balanced_bounds(0, 3, 3) == ((0, 1), (1, 2), (2, 3))


def test_ulysses_head_shards_replicate_kv_heads_when_needed():
    shards = plan_head_shards(8, 2, 3)
    assert [(s.q_start, s.q_stop, s.kv_start, s.kv_stop) for s in shards] == [
        (0, 3, 0, 1), (3, 6, 0, 2), (6, 8, 1, 2)
    ]
    assert [(s.kv_start, s.kv_stop) for s in plan_head_shards(28, 4, 8)][:2] == [(0, 1), (0, 2)]


def test_zigzag_ring_schedule_is_one_rectangle_per_step():
    world_size = 4
    plans = tuple(plan_zigzag(1003, 0, world_size, r) for r in range(world_size))
    for plan in plans:
        for step, blocks in enumerate(plan_ring_schedule(plan, plans), start=1):
            assert len(blocks) == 1
            src = (plan.rank - step) % world_size
            if src < plan.rank:  # all local rows against the peer's first chunk
                assert (blocks[0].q_start, blocks[0].q_stop) == (0, plan.num_local_tokens)
                assert blocks[0].num_keys == plans[src].segments[0].length
            else:  # second local chunk against everything the peer holds
                assert blocks[0].q_start == plan.segments[0].length
                assert blocks[0].num_keys == plans[src].num_local_tokens
