"""Authenticated, encrypted control sockets from one shared secret (ZMQ CURVE).

With `runtime.secret` set (or SPAVA_SECRET in the environment), every control socket uses CURVE:
two key pairs are derived deterministically from the secret (SHA-256 of role + secret), one for the
scheduler's ROUTER and one shared by members (workers, clients). The ROUTER accepts only
connections that prove the member key, so a peer without the secret can neither submit work nor
pose as a worker, and traffic across the network is encrypted. Without a secret, sockets are
plain and should stay on loopback / ipc (the default).
"""

from __future__ import annotations

import hashlib
import os

import zmq
from zmq.utils import z85

SECRET_ENV = "SPAVA_SECRET"


def resolve_secret(configured: str | None) -> str:
    """The configured secret, else SPAVA_SECRET from the environment, else "" (no CURVE)."""
    return configured or os.environ.get(SECRET_ENV, "")


def derive_keypair(secret: str, role: str) -> tuple[bytes, bytes]:
    """(public, secret) z85 CURVE keys for `role` ("server" or "member"), derived from `secret`."""
    seed = hashlib.sha256(f"spava-curve:{role}:{secret}".encode()).digest()
    secret_key = z85.encode(seed)
    return zmq.curve_public(secret_key), secret_key


class _MemberOnly:
    """ZAP callback: accept exactly the member public key derived from the secret."""

    def __init__(self, member_public: bytes):
        self.member_public = member_public

    def callback(self, domain: str, key: bytes) -> bool:
        return z85.encode(key) == self.member_public if len(key) == 32 else key == self.member_public


def secure_server(context: zmq.Context, socket: zmq.Socket, secret: str):
    """Make `socket` a CURVE server that admits members only; returns the authenticator (keep it)."""
    if not secret:
        return None
    from zmq.auth.thread import ThreadAuthenticator

    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback("*", credentials_provider=_MemberOnly(derive_keypair(secret, "member")[0]))
    public, secret_key = derive_keypair(secret, "server")
    socket.curve_secretkey = secret_key
    socket.curve_publickey = public
    socket.curve_server = True
    return authenticator


def secure_client(socket: zmq.Socket, secret: str) -> None:
    """Make `socket` a CURVE client with the member keys (before `connect`)."""
    if not secret:
        return
    socket.curve_serverkey = derive_keypair(secret, "server")[0]
    public, secret_key = derive_keypair(secret, "member")
    socket.curve_publickey = public
    socket.curve_secretkey = secret_key
