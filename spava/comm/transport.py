"""Bulk tensors between processes of one host: shared-memory files named by `TensorRef`.

The producer writes a tensor once into a file under `runtime.shm_dir` (tmpfs); consumers map it
zero-copy (read-only, copy-on-write). Control messages carry only the `TensorRef`. The scheduler owns
the lifetime: it unlinks a request's files when the request ends (unlinking keeps live mappings
valid on Linux, so a slow reader is never cut off). Tensors between GPU ranks go through
`spava.comm.collectives` (NCCL) instead.

The torch-free part (names and owners, bytes, frame progress, sweeping) lives in `spava.comm.shm`
and is re-exported here; torch is imported only by the functions that build or map tensors, so a
process that imports this module for the rest (the scheduler, the video worker) never loads it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from spava.comm.messages import TensorRef
from spava.comm.shm import (  # noqa: F401 - re-exported: the torch-free part
    DATA_ADDRESS_ENV, NODE_ENV, OWNER_ENV, PROGRESS_DONE, PROGRESS_FAILED, PROGRESS_RUNNING, FrameProgress,
    create_shared_frames, fail_progress, local_ref_path, new_ref_path, node_name, read_shared_bytes, unlink_shared,
    write_shared_array, write_shared_bytes,
)

if TYPE_CHECKING:
    import torch

_DTYPE_NAMES = ("uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32", "float64", "bool")


def dtype_from_name(name: str) -> "torch.dtype":
    import torch

    if name not in _DTYPE_NAMES:
        raise ValueError(f"unsupported shared tensor dtype {name!r}")
    return getattr(torch, name)


def write_shared(tensor: "torch.Tensor", directory: str, request_id: str, name: str) -> TensorRef:
    """Copy a CPU tensor into a new shared-memory file; returns its reference."""
    import torch

    tensor = tensor.detach().to("cpu").contiguous()
    path = new_ref_path(directory, request_id, name)
    dtype_name = str(tensor.dtype).removeprefix("torch.")
    dtype_from_name(dtype_name)
    try:
        if tensor.numel() == 0:
            open(path, "wb").close()
        else:
            target = torch.from_file(path, shared=True, size=tensor.numel(), dtype=tensor.dtype)
            target.copy_(tensor.view(-1))
            del target
    except BaseException:
        unlink_shared(TensorRef(path=path, shape=[], dtype=dtype_name))
        raise
    return TensorRef(path=path, shape=list(tensor.shape), dtype=dtype_name, node=node_name())


def read_shared(ref: TensorRef) -> "torch.Tensor":
    """Map a shared tensor zero-copy (private mapping: writes stay local to this process).

    A ref produced on another node is first fetched from that node's data server into this node's
    tmpfs; the fetched file is unlinked once mapped (the mapping stays valid).
    """
    import torch

    numel = 1
    for dim in ref.shape:
        numel *= dim
    dtype = dtype_from_name(ref.dtype)
    if numel == 0:
        return torch.empty(ref.shape, dtype=dtype)
    path, is_copy = local_ref_path(ref)
    if not os.path.exists(path):
        raise FileNotFoundError(f"shared tensor {ref.path} is gone (request finished or cancelled)")
    tensor = torch.from_file(path, shared=False, size=numel, dtype=dtype).view(ref.shape)
    if is_copy:
        os.unlink(path)
    return tensor


def read_frames(path: str, shape: list[int], first: int, stop: int,
                out: "torch.Tensor | None" = None) -> "torch.Tensor":
    """Frames `[first, stop)` of a `[T, H, W, 3]` uint8 frames file as `[stop-first, H, W, 3]`, by pread.

    `out` (e.g. pinned host memory, for a fast copy to the GPU) receives them when given. Reading
    with pread, not a mapping, sees frames written after the file was first opened.
    """
    import torch

    _, height, width, channels = shape
    frame_bytes = height * width * channels
    out = torch.empty((stop - first, height, width, channels), dtype=torch.uint8) if out is None else out
    if stop <= first:
        return out
    view = memoryview(out.numpy()).cast("B")
    with open(path, "rb", buffering=0) as handle:
        offset, done = first * frame_bytes, 0
        while done < view.nbytes:
            num_read = os.preadv(handle.fileno(), [view[done:]], offset + done)
            if num_read <= 0:
                raise OSError(f"frames file {path} ended early (truncated?)")
            done += num_read
    return out
