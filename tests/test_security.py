"""CURVE control sockets: members with the secret talk; strangers are refused."""

from __future__ import annotations

import zmq

from spava.comm.security import derive_keypair, secure_client, secure_server


def _pair(server_secret: str, client_secret: str) -> bool:
    context = zmq.Context()
    server = context.socket(zmq.ROUTER)
    authenticator = secure_server(context, server, server_secret)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client = context.socket(zmq.DEALER)
    secure_client(client, client_secret)
    client.connect(f"tcp://127.0.0.1:{port}")
    client.send(b"hello")
    received = server.poll(1500) != 0
    for sock in (client, server):
        sock.close(0)
    if authenticator is not None:
        authenticator.stop()
    context.term()
    return received


def test_keys_are_deterministic_and_role_specific():
    assert derive_keypair("s3cret", "server") == derive_keypair("s3cret", "server")
    assert derive_keypair("s3cret", "server") != derive_keypair("s3cret", "member")
    assert derive_keypair("s3cret", "member") != derive_keypair("other", "member")


def test_members_with_the_secret_are_admitted_and_strangers_refused():
    assert _pair("s3cret", "s3cret")
    assert not _pair("s3cret", "wrong")
    assert not _pair("s3cret", "")  # plain socket against a CURVE server
    assert _pair("", "")  # no secret configured: plain sockets (loopback / ipc only)


def test_data_server_streams_spava_files_only_to_members(tmp_path, monkeypatch):
    import os

    import pytest
    import torch

    from spava.comm import data_server, transport
    from spava.comm.data_server import DataServer, fetch_file
    from spava.runtime.launch import free_port

    monkeypatch.setattr(data_server, "CHUNK_BYTES", 1000)  # force several chunks
    monkeypatch.setenv("SPAVA_SECRET", "member-key")
    monkeypatch.setenv("SPAVA_NODE_NAME", "head")
    ref = transport.write_shared(torch.arange(3000, dtype=torch.float32), str(tmp_path), "r1", "x")
    (tmp_path / "private.txt").write_text("not for you")
    address = f"tcp://127.0.0.1:{free_port()}"
    server = DataServer(address, str(tmp_path), "member-key")
    try:
        monkeypatch.setenv("SPAVA_NODE_NAME", "node1")
        monkeypatch.setenv("SPAVA_DATA_ADDRESS", address)
        assert torch.equal(transport.read_shared(ref), torch.arange(3000, dtype=torch.float32))
        assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(ref.path), "private.txt"])
        with pytest.raises(FileNotFoundError, match="not a spava shared tensor"):
            fetch_file(address, str(tmp_path / "private.txt"), str(tmp_path))
        monkeypatch.setenv("SPAVA_SECRET", "stranger")
        with pytest.raises(TimeoutError):
            fetch_file(address, ref.path, str(tmp_path), timeout_s=2)
    finally:
        server.close()
