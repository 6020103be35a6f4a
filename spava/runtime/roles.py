"""What each worker role builds: its stage objects and the handler of each task message type."""

from __future__ import annotations

from spava.comm.messages import EncodeBatchReq, LayoutTaskReq, ModelTaskReq, VideoTaskReq
from spava.plan.placement import placement_from_config
from spava.stages.base import load_stage_class


def _stage(worker, name: str, context):
    stage = load_stage_class(worker.config.stages[name]).from_config(worker.config, context)
    stage.setup()
    return stage


def cpu_stage_threads(config, num_cores: int) -> int:
    """Intra-op threads of one video / layout worker: an equal share of the cores among every
    worker process of this node (at least 1, at most 8). The launcher starts workers with
    OMP_NUM_THREADS=1, so without this a layout worker resized and patchified on one core
    (about 2 s for a 128-frame 720p request, more than the GPUs need for it)."""
    num_workers = config.video.num_workers + config.layout.num_workers + config.world_size
    return max(1, min(8, num_cores // num_workers))


def _build_cpu_role(worker, name: str, message_type):
    import os

    if name != "video":  # the video worker decodes with PyAV threads of its own and needs no torch
        import torch

        torch.set_num_threads(cpu_stage_threads(worker.config, os.cpu_count() or 1))
    stage = _stage(worker, name, worker.stage_context("cpu"))
    return "cpu", {message_type: stage.process}


def _dist_backend(config, device: str) -> str:
    if config.runtime.dist_backend != "auto":
        return config.runtime.dist_backend
    return "nccl" if device.startswith("cuda") else "gloo"


def _build_model_role(worker):
    import torch

    from spava.comm.collectives import init_world, new_group

    config, rank = worker.config, worker.args.rank
    placement = placement_from_config(config)
    device = placement.device(rank)
    if device.startswith("cuda"):  # GPU ranks need few host threads; many would oversubscribe the host
        import os

        torch.set_num_threads(max(1, min(8, (os.cpu_count() or 1) // placement.world_size)))
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    init_world(_dist_backend(config, device), config.runtime.dist_address, worker.args.dist_port, rank,
               placement.world_size, config.runtime.request_timeout_s)
    group = new_group(placement.prefill_ranks())
    context = worker.stage_context(device, placement, group)
    if placement.role(rank) == "encode":
        encoder = _stage(worker, "encode", context)
        return device, _encoder_handlers(encoder, config.encode.max_batch_requests)
    prefill = _stage(worker, "prefill", context)
    decode = _stage(worker, "decode", context)
    decode.bind(prefill.runner)
    return device, {ModelTaskReq: lambda task: decode.process(prefill.process(task))}


def _encoder_handlers(encoder, max_batch_requests: int) -> dict:
    """One request (`ModelTaskReq`) -> `process`; a batch (`EncodeBatchReq`) -> `process_batch`."""
    if not hasattr(encoder, "process_batch"):
        if max_batch_requests > 1:
            raise ValueError(f"the encode stage {type(encoder).__name__} has no process_batch(EncodeBatchReq); "
                             "set encode.max_batch_requests=1")
        return {ModelTaskReq: encoder.process}
    return {ModelTaskReq: encoder.process, EncodeBatchReq: encoder.process_batch}


def build_role(worker):
    """-> (device, {message type: handler}) for `worker.args.role`."""
    role = worker.args.role
    if role == "video":
        return _build_cpu_role(worker, "video", VideoTaskReq)
    if role == "layout":
        return _build_cpu_role(worker, "layout", LayoutTaskReq)
    return _build_model_role(worker)
