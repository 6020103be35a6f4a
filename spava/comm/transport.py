"""Bulk tensors between processes of one host: shared-memory files named by `TensorRef`.

The producer writes a tensor once into a file under `runtime.shm_dir` (tmpfs); consumers map it
zero-copy (read-only, copy-on-write). Control messages carry only the `TensorRef`. The scheduler owns
the lifetime: it unlinks a request's files when the request ends (unlinking keeps live mappings
valid on Linux, so a slow reader is never cut off). Tensors between GPU ranks go through
`spava.comm.collectives` (NCCL) instead.
"""

from __future__ import annotations

import os
import uuid

import torch

from spava.comm.messages import TensorRef

_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in (
    torch.uint8, torch.int8, torch.int32, torch.int64, torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.bool,
)}


def dtype_from_name(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unsupported shared tensor dtype {name!r}")
    return _DTYPES[name]


NODE_ENV = "SPAVA_NODE_NAME"  # this process's node name (set by `spava launch` on multi-node runs)
DATA_ADDRESS_ENV = "SPAVA_DATA_ADDRESS"  # the head node's data server, on the other nodes


def node_name() -> str:
    return os.environ.get(NODE_ENV, "")


def new_ref_path(directory: str, request_id: str, name: str) -> str:
    safe_id = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in request_id)[:64]
    return os.path.join(directory, f"spava-{safe_id}-{name}-{uuid.uuid4().hex[:8]}")


def write_shared(tensor: torch.Tensor, directory: str, request_id: str, name: str) -> TensorRef:
    """Copy a CPU tensor into a new shared-memory file; returns its reference."""
    tensor = tensor.detach().to("cpu").contiguous()
    path = new_ref_path(directory, request_id, name)
    dtype_name = str(tensor.dtype).removeprefix("torch.")
    dtype_from_name(dtype_name)
    if tensor.numel() == 0:
        open(path, "wb").close()
    else:
        target = torch.from_file(path, shared=True, size=tensor.numel(), dtype=tensor.dtype)
        target.copy_(tensor.view(-1))
        del target
    return TensorRef(path=path, shape=list(tensor.shape), dtype=dtype_name, node=node_name())


def write_shared_bytes(data: bytes, directory: str, request_id: str, name: str) -> TensorRef:
    path = new_ref_path(directory, request_id, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return TensorRef(path=path, shape=[len(data)], dtype="uint8", node=node_name())


def _local_path(ref: TensorRef) -> tuple[str, bool]:
    """(path to map, whether it is a fetched private copy) for a ref that may live on another node."""
    if not ref.node or ref.node == node_name() or not os.environ.get(DATA_ADDRESS_ENV):
        return ref.path, False
    from spava.comm.data_server import fetch_file

    return fetch_file(os.environ[DATA_ADDRESS_ENV], ref.path, os.path.dirname(ref.path) or "/dev/shm"), True


def read_shared(ref: TensorRef) -> torch.Tensor:
    """Map a shared tensor zero-copy (private mapping: writes stay local to this process).

    A ref produced on another node is first fetched from that node's data server into this node's
    tmpfs; the fetched file is unlinked once mapped (the mapping stays valid).
    """
    numel = 1
    for dim in ref.shape:
        numel *= dim
    dtype = dtype_from_name(ref.dtype)
    if numel == 0:
        return torch.empty(ref.shape, dtype=dtype)
    path, is_copy = _local_path(ref)
    if not os.path.exists(path):
        raise FileNotFoundError(f"shared tensor {ref.path} is gone (request finished or cancelled)")
    tensor = torch.from_file(path, shared=False, size=numel, dtype=dtype).view(ref.shape)
    if is_copy:
        os.unlink(path)
    return tensor


def read_shared_bytes(ref: TensorRef) -> bytes:
    with open(ref.path, "rb") as handle:
        return handle.read()


def unlink_shared(ref: TensorRef | None) -> None:
    if ref is None:
        return
    try:
        os.unlink(ref.path)
    except FileNotFoundError:
        pass
