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
