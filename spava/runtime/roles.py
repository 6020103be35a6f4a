"""What each worker role builds: its stage objects and the handler of each task message type."""

from __future__ import annotations

import os

from spava.comm.messages import EncodeBatchReq, LayoutTaskReq, ModelTaskReq, VideoTaskReq
from spava.runtime.nodes import LaunchedRank, launched_device
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
    if name != "video":  # the video worker decodes with PyAV threads of its own and needs no torch
        import torch

        torch.set_num_threads(cpu_stage_threads(worker.config, os.cpu_count() or 1))
    stage = _stage(worker, name, worker.stage_context("cpu"))
    return "cpu", {message_type: stage.process}


def _dist_backend(config, device: str) -> str:
    if config.runtime.dist_backend != "auto":
        return config.runtime.dist_backend
    return "nccl" if device.startswith("cuda") else "gloo"


def _launched_device(configured: str) -> str:
    """`cuda:LOCAL_RANK` for a CUDA rank of a launcher-started world (`spava.runtime.nodes`)."""
    local_rank = LaunchedRank.from_environ(os.environ).local_rank
    device = launched_device(configured, local_rank)
    if device.startswith("cuda"):
        import torch

        num_gpus = torch.cuda.device_count()
        if local_rank >= num_gpus:
            raise ValueError(f"LOCAL_RANK={local_rank} but this node sees {num_gpus} GPU(s) "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start at most "
                             f"{num_gpus} processes per node (--nproc-per-node, the hostfile's slots)")
    return device


def _build_model_role(worker):
    import torch

    from spava.comm.collectives import init_world, init_world_from_env, new_group

    config, rank = worker.config, worker.args.rank
    placement = placement_from_config(config)
    is_launched = worker.args.dist_init == "env"  # torchrun / deepspeed started the world
    device = _launched_device(placement.device(rank)) if is_launched else placement.device(rank)
    if device.startswith("cuda"):  # GPU ranks need few host threads; many would oversubscribe the host
        torch.set_num_threads(max(1, min(8, (os.cpu_count() or 1) // placement.world_size)))
        torch.cuda.set_device(torch.device(device))
    backend, timeout_s = _dist_backend(config, device), config.runtime.request_timeout_s
    if is_launched:
        init_world_from_env(backend, rank, placement.world_size, timeout_s)
    else:
        init_world(backend, config.runtime.dist_address, worker.args.dist_port, rank, placement.world_size, timeout_s)
    group = new_group(placement.prefill_ranks())
    context = worker.stage_context(device, placement, group)
    if placement.role(rank) == "encode":
        encoder = _stage(worker, "encode", context)
        return device, failing_on_lost_peers(_encoder_handlers(encoder, config.encode.max_batch_requests))
    prefill = _stage(worker, "prefill", context)
    decode = _stage(worker, "decode", context)
    decode.bind(prefill.runner)
    return device, failing_on_lost_peers({ModelTaskReq: lambda task: decode.process(prefill.process(task))})


class PeerLostError(RuntimeError):
    """A model task failed because another model rank is gone (its process, or its node)."""


def failing_on_lost_peers(handlers: dict) -> dict:
    """Model handlers whose collective failures caused by a gone rank raise `PeerLostError` (the
    request's kind is then "worker_died", not "internal")."""
    from spava.comm.collectives import is_peer_failure

    def guarded(handler):
        def run(task):
            try:
                return handler(task)
            except Exception as error:
                if is_peer_failure(error):
                    raise PeerLostError(f"another model rank stopped answering (its process or its node is gone): "
                                        f"{error}") from error
                raise
        return run

    return {message_type: guarded(handler) for message_type, handler in handlers.items()}


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
