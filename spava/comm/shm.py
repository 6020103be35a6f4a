"""Shared-memory files of one host without torch: their names and owners, bytes and uint8 arrays,
streamed frames' progress, and sweeping what dead pipelines left behind.

Imported by every process that touches `runtime.shm_dir` (tmpfs, i.e. RAM): the scheduler, the
client (`Pipeline.submit` writes encoded videos and frames), the video worker, which need no torch,
and through `spava.comm.transport` (which adds the torch readers and writers) the layout worker
and the model ranks.

Ownership is in the name. Every file is `spava-p<pid>-<pipeline id>-<request id>-<what>-<random>`
and every temp folder `spava-p<pid>-<pipeline id>-<random>`, where `p<pid>-<pipeline id>` (the
owner tag) names the process that frees it: the scheduler for its pipeline's files (its workers get
the tag in `SPAVA_SHM_OWNER`), a client for the payloads it has not handed over yet. A pipeline
unlinks its own files when it closes (`sweep_owner`); files of a process killed with SIGKILL are
removed by the next pipeline that starts on the host (`sweep_orphans`), which touches only names
whose owner process is gone, never those of a live pipeline.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid

from spava.comm.messages import TensorRef

NODE_ENV = "SPAVA_NODE_NAME"  # this process's node name (set by `spava launch` on multi-node runs)
DATA_ADDRESS_ENV = "SPAVA_DATA_ADDRESS"  # the head node's data server, on the other nodes
OWNER_ENV = "SPAVA_SHM_OWNER"  # owner tag of the files this process creates (set for workers)
_OWNED_NAME = re.compile(r"^spava-p(\d+)-([0-9A-Za-z]+)-")


def node_name() -> str:
    return os.environ.get(NODE_ENV, "")


def new_pipeline_id() -> str:
    """A fresh pipeline id (8 hex digits) for `owner_tag`."""
    return uuid.uuid4().hex[:8]


def owner_tag(pipeline_id: str, pid: int | None = None) -> str:
    """`p<pid>-<pipeline id>`: the prefix (after `spava-`) of everything that owner creates."""
    if not pipeline_id.isalnum():
        raise ValueError(f"pipeline id {pipeline_id!r} must be alphanumeric")
    return f"p{os.getpid() if pid is None else pid}-{pipeline_id}"


def current_owner() -> str:
    """The owner tag of this process's files: `SPAVA_SHM_OWNER` (workers), else this process itself."""
    return os.environ.get(OWNER_ENV) or owner_tag("proc")


def new_ref_path(directory: str, request_id: str, name: str, owner: str | None = None) -> str:
    """A new file name under `directory` for `name` of `request_id`, owned by `owner` (default
    `current_owner()`)."""
    safe_id = request_file_key(request_id)
    return os.path.join(directory, f"spava-{owner or current_owner()}-{safe_id}-{name}-{uuid.uuid4().hex[:8]}")


def owner_prefix(owner: str) -> str:
    """The name prefix of every file and folder of `owner`."""
    return f"spava-{owner}-"


def ref_glob(directory: str, request_id: str) -> str:
    """A glob pattern matching every file of `request_id` under `directory`, whoever owns it."""
    return os.path.join(directory, f"spava-p*-*-{request_id}-*")


def write_shared_bytes(data: bytes, directory: str, request_id: str, name: str, owner: str | None = None) -> TensorRef:
    """Write encoded bytes into a new shared-memory file; returns its reference (`[N]` uint8)."""
    path = new_ref_path(directory, request_id, name, owner)
    try:
        with open(path, "wb") as handle:
            handle.write(data)
    except BaseException:
        _unlink(path)
        raise
    return TensorRef(path=path, shape=[len(data)], dtype="uint8", node=node_name())


def write_shared_array(array, directory: str, request_id: str, name: str, owner: str | None = None) -> TensorRef:
    """Write a uint8 numpy array (e.g. frames `[T, H, W, 3]`) into a new shared-memory file, no torch."""
    import numpy as np

    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_shared_array takes uint8 arrays, got {array.dtype}")
    ref = write_shared_bytes(memoryview(array.reshape(-1)), directory, request_id, name, owner)
    return TensorRef(path=ref.path, shape=list(array.shape), dtype="uint8", node=ref.node)


def read_shared_bytes(ref: TensorRef) -> bytes:
    with open(ref.path, "rb") as handle:
        return handle.read()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def unlink_shared(ref: TensorRef | None) -> None:
    """Remove a shared-memory file (no error when it is gone already); live mappings stay valid."""
    if ref is not None:
        _unlink(ref.path)


def adopt_shared(ref: TensorRef, owner: str) -> TensorRef:
    """Take over a file another process (a client) wrote: rename it into `owner`'s namespace, in the
    same directory, so the new owner's sweeps free it. Raises FileNotFoundError when it is gone."""
    directory, name = os.path.split(ref.path)
    match = _OWNED_NAME.match(name)
    if match is not None and f"p{match.group(1)}-{match.group(2)}" == owner:
        return ref
    rest = name[match.end():] if match is not None else name.removeprefix("spava-")
    path = os.path.join(directory, f"{owner_prefix(owner)}{rest}")
    os.rename(ref.path, path)
    return TensorRef(path=path, shape=list(ref.shape), dtype=ref.dtype, node=ref.node)


# ----- sweeping --------------------------------------------------------------------------------

def is_process_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a zombie's files are orphans too)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def owner_pid(name: str) -> int | None:
    """The owner's pid of a `spava-p<pid>-...` name, None for other names."""
    match = _OWNED_NAME.match(name)
    return int(match.group(1)) if match is not None else None


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        _unlink(path)


def sweep_owner(directory: str, owner: str) -> list[str]:
    """Remove every file and folder of `owner` under `directory`; returns what was removed."""
    return _sweep_prefix(directory, owner_prefix(owner), _remove)


def sweep_request(directory: str, owner: str, request_id: str) -> list[str]:
    """Remove every file of `owner` for `request_id` under `directory` (also those a worker created
    but died before announcing); returns their names. Call it only once no live request of the
    owner has this id, nor one that names its files the same (`request_file_key`)."""
    return _sweep_prefix(directory, f"{owner_prefix(owner)}{request_file_key(request_id)}-", _unlink)


def _sweep_prefix(directory: str, prefix: str, remove) -> list[str]:
    removed = []
    for name in _names(directory):
        if name.startswith(prefix):
            remove(os.path.join(directory, name))
            removed.append(name)
    return removed


def request_file_key(request_id: str) -> str:
    """How `request_id` appears in file names (other ids may map to the same key)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in request_id)[:64]


def sweep_orphans(*directories: str) -> list[str]:
    """Remove the `spava-p<pid>-...` files and folders under `directories` whose owner process is
    dead (left by a pipeline killed with SIGKILL); returns their paths. Live owners' are kept."""
    removed = []
    for directory in directories:
        for name in _names(directory):
            pid = owner_pid(name)
            if pid is not None and not is_process_alive(pid):
                path = os.path.join(directory, name)
                _remove(path)
                removed.append(path)
    return removed


def _names(directory: str) -> list[str]:
    try:
        return [name for name in os.listdir(directory) if name.startswith("spava-p")]
    except (FileNotFoundError, NotADirectoryError):
        return []


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
    try:
        with open(path, "wb") as handle:
            handle.truncate(num_frames * height * width * 3)
        array = (np.memmap(path, dtype=np.uint8, mode="r+", shape=shape) if num_frames * height * width
                 else np.empty(shape, np.uint8))
    except BaseException:
        _unlink(path)
        raise
    return TensorRef(path=path, shape=list(shape), dtype="uint8", node=node_name()), array


def local_ref_path(ref: TensorRef) -> tuple[str, bool]:
    """(path to read, whether it is a private copy fetched from the node holding it: unlink it after)."""
    if not ref.node or ref.node == node_name() or not os.environ.get(DATA_ADDRESS_ENV):
        return ref.path, False
    from spava.comm.data_server import fetch_file

    return fetch_file(os.environ[DATA_ADDRESS_ENV], ref.path, os.path.dirname(ref.path) or "/dev/shm"), True
