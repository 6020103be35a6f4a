"""A pipeline on TCP with a shared secret: members are served, a client without the secret is refused."""

from __future__ import annotations

import pytest

from spava.config import load_config
from spava.runtime.launch import free_port
from spava.runtime.pipeline import Pipeline


def test_secret_protects_the_control_plane():
    address = f"tcp://127.0.0.1:{free_port()}"
    overrides = [f"runtime.control_address={address}", "runtime.secret=correct-horse", "runtime.log_level=WARNING",
                 "decode.max_new_tokens=2"]
    with Pipeline.from_config(load_config("configs/demo_cpu.yaml", overrides), is_quiet=True) as pipeline:
        assert pipeline.run(None, "hello?").finish_reason == "length"
        with Pipeline.connect(address, secret="correct-horse") as member:
            assert len(member.run(None, "from another client").token_ids) == 2
        stranger = Pipeline.connect(address, load_config(None, ["runtime.connect_timeout_s=3"]), secret="wrong")
        with pytest.raises(ConnectionError, match=f"no spava pipeline answered at {address}.*secret"):
            stranger.submit(None, "let me in")  # never answered: refused at the first contact
        assert pipeline.status().is_healthy
