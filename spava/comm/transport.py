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


# ----- frames that stream in -------------------------------------------------------------------

PROGRESS_RUNNING, PROGRESS_DONE, PROGRESS_FAILED = 0, 1, 2
_PROGRESS_HEADER = 8  # int64 status, then one byte per frame (1 = written)


class FrameProgress:
    """Which frames of a streamed frames file are written, and whether decoding ended.

    File layout: an int64 status (running / done / failed) then one byte per frame. The writer (the
    video worker) writes a frame's pixels, then marks it with `os.pwrite`; readers (the model ranks)
    poll with `os.pread`. Both go through the page cache and are system calls, so a reader that sees
    a frame marked also sees its pixels. The status only moves from running to done or failed, and
    whoever ends a request first (the video worker, or the scheduler for a dead or cancelled one)
    sets it; every model rank decides from the same file, so they agree.
    """

    def __init__(self, path: str, num_frames: int, fd: int):
        self.path, self.num_frames, self._fd = path, num_frames, fd

    @classmethod
    def create(cls, path: str, num_frames: int) -> "FrameProgress":
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.pwrite(fd, bytes(_PROGRESS_HEADER + num_frames), 0)
        return cls(path, num_frames, fd)

    @classmethod
    def open(cls, path: str) -> "FrameProgress":
        fd = os.open(path, os.O_RDWR)
        return cls(path, os.fstat(fd).st_size - _PROGRESS_HEADER, fd)

    def mark(self, first: int, stop: int) -> None:
        """Frames `[first, stop)` are written."""
        if stop > first:
            os.pwrite(self._fd, b"\x01" * (stop - first), _PROGRESS_HEADER + first)

    def finish(self, is_ok: bool) -> None:
        """End the stream (done or failed), unless it has ended already."""
        if self.status() == PROGRESS_RUNNING:
            status = PROGRESS_DONE if is_ok else PROGRESS_FAILED
            os.pwrite(self._fd, status.to_bytes(8, "little"), 0)

    def status(self) -> int:
        return int.from_bytes(os.pread(self._fd, 8, 0), "little")

    def ready(self) -> tuple[int, list[bool]]:
        """(status, per-frame written flags) in one read."""
        data = os.pread(self._fd, _PROGRESS_HEADER + self.num_frames, 0)
        return int.from_bytes(data[:8], "little"), [bool(b) for b in data[_PROGRESS_HEADER:]]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def fail_progress(path: str | None) -> None:
    """Mark a frames stream failed (the scheduler, for a request that ended while it decoded)."""
    if not path:
        return
    try:
        progress = FrameProgress.open(path)
    except FileNotFoundError:
        return
    try:
        progress.finish(is_ok=False)
    finally:
        progress.close()


def create_shared_frames(directory: str, request_id: str, num_frames: int, height: int, width: int):
    """A new shared-memory frames file `[T, H, W, 3]` uint8 to be filled in place.

    Returns (its `TensorRef`, a writable numpy view of it). The file is sized up front; pages are
    written through the shared mapping and read by the model ranks with `read_frames`.
    """
    import numpy as np

    path = new_ref_path(directory, request_id, "frames")
    shape = (num_frames, height, width, 3)
    with open(path, "wb") as handle:
        handle.truncate(num_frames * height * width * 3)
    if num_frames * height * width == 0:
        return TensorRef(path=path, shape=list(shape), dtype="uint8", node=node_name()), np.empty(shape, np.uint8)
    array = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
    return TensorRef(path=path, shape=list(shape), dtype="uint8", node=node_name()), array


def local_ref_path(ref: TensorRef) -> tuple[str, bool]:
    """(path to read, whether it is a private copy fetched from the node holding it: unlink it after)."""
    return _local_path(ref)


def read_frames(path: str, shape: list[int], first: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Frames `[first, stop)` of a `[T, H, W, 3]` uint8 frames file as `[stop-first, H, W, 3]`, by pread.

    `out` (e.g. pinned host memory, for a fast copy to the GPU) receives them when given. Reading
    with pread, not a mapping, sees frames written after the file was first opened.
    """
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
