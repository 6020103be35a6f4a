"""Serving shared-memory tensor files to other nodes (bulk data, never control messages).

On multi-node runs the head node's video / layout workers write their outputs to its tmpfs; model
ranks on other nodes fetch them through this server: a ZMQ ROUTER thread on the head (CURVE-secured
with the runtime secret) that answers `{path, offset, size}` requests with raw byte frames, chunked
so a multi-GB pixel tensor never sits whole in a message. Only `spava-*` files under the shm
directory are served.
"""

from __future__ import annotations

import os
import threading

import msgpack
import zmq

from spava.comm.security import resolve_secret, secure_client, secure_server
from spava.comm.shm import new_ref_path

CHUNK_BYTES = 64 << 20


class DataServer:
    """Background thread serving `spava-*` files of `shm_dir` at `address`."""

    def __init__(self, address: str, shm_dir: str, secret: str = ""):
        self.shm_dir = os.path.realpath(shm_dir)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.authenticator = secure_server(self.context, self.socket, secret)
        self.socket.bind(address)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _answer(self, request: bytes) -> list[bytes]:
        try:
            query = msgpack.unpackb(request)
            path = os.path.realpath(query["path"])
            offset, size = int(query["offset"]), int(query["size"])
        except (ValueError, KeyError, TypeError, msgpack.ExtraData, msgpack.FormatError):
            return [b"error", b"malformed request"]
        if os.path.dirname(path) != self.shm_dir or not os.path.basename(path).startswith("spava-"):
            return [b"error", b"not a spava shared tensor"]
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                return [b"ok", str(os.path.getsize(path)).encode(), handle.read(min(size, CHUNK_BYTES))]
        except FileNotFoundError:
            return [b"error", b"gone (request finished or cancelled)"]

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self.socket.poll(100):
                identity, request = self.socket.recv_multipart()
                self.socket.send_multipart([identity, *self._answer(request)])

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started (Ctrl-C may land between creating and starting it)
            self._thread.join(timeout=5)
        self.socket.close()
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.term()


def fetch_file(address: str, path: str, directory: str, timeout_s: float = 60.0) -> str:
    """Copy a remote spava shared file into a new file under `directory`; returns the local path."""
    context = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    secure_client(socket, resolve_secret(None))
    socket.connect(address)
    local = new_ref_path(directory, "fetched", "copy")  # owned by this process: swept if it dies holding it
    try:
        with open(local, "wb") as handle:
            offset, total = 0, None
            while total is None or offset < total:
                socket.send(msgpack.packb({"path": path, "offset": offset, "size": CHUNK_BYTES}))
                if not socket.poll(int(timeout_s * 1000)):
                    raise TimeoutError(f"no answer from the data server at {address} for {path}")
                status, *rest = socket.recv_multipart()
                if status != b"ok":
                    raise FileNotFoundError(f"data server: {path}: {rest[0].decode() if rest else '?'}")
                total, chunk = int(rest[0]), rest[1]
                handle.write(chunk)
                offset += len(chunk)
                if not chunk and offset < total:
                    raise OSError(f"data server returned an empty chunk for {path}")
    except BaseException:
        if os.path.exists(local):
            os.unlink(local)
        raise
    finally:
        socket.close()
    return local
