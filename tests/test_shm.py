"""Shared-memory files: owner-tagged names, adoption by the scheduler, and sweeping only what dead
owners left (never a live pipeline's); the scheduler-side modules import no torch."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from spava.comm.shm import (adopt_shared, is_process_alive, new_ref_path, owner_pid, owner_tag, read_shared_bytes,
                            ref_glob, request_file_key, sweep_orphans, sweep_owner, sweep_request, write_shared_array,
                            write_shared_bytes)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_names_carry_the_owner_and_the_request(tmp_path):
    owner = owner_tag("abc123")
    path = new_ref_path(str(tmp_path), "req/1 x", "frames", owner)
    name = os.path.basename(path)
    assert name.startswith(f"spava-p{os.getpid()}-abc123-req_1_x-frames-")
    assert owner_pid(name) == os.getpid()
    assert owner_pid("spava-req-frames-1234abcd") is None  # names of other formats have no owner
    with pytest.raises(ValueError):
        owner_tag("not/alnum")


def test_bytes_and_arrays_round_trip(tmp_path):
    ref = write_shared_bytes(b"\x00\x01abc", str(tmp_path), "r1", "video", owner_tag("x1"))
    assert read_shared_bytes(ref) == b"\x00\x01abc" and ref.shape == [5]
    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    ref = write_shared_array(frames, str(tmp_path), "r1", "video", owner_tag("x1"))
    assert ref.shape == [3, 4, 5, 3] and ref.dtype == "uint8"
    assert np.array_equal(np.fromfile(ref.path, dtype=np.uint8).reshape(ref.shape), frames)
    empty = write_shared_array(np.zeros((0, 2, 2, 3), np.uint8), str(tmp_path), "r2", "video")
    assert empty.shape == [0, 2, 2, 3] and os.path.getsize(empty.path) == 0
    with pytest.raises(ValueError, match="uint8"):
        write_shared_array(frames.astype(np.float32), str(tmp_path), "r3", "video")
    assert len(glob.glob(ref_glob(str(tmp_path), "r1"))) == 2 and len(os.listdir(tmp_path)) == 3


def test_adoption_renames_into_the_new_owner(tmp_path):
    client, scheduler = owner_tag("c0ffee", pid=12345), owner_tag("5ced")
    ref = write_shared_bytes(b"data", str(tmp_path), "r1", "video", client)
    adopted = adopt_shared(ref, scheduler)
    assert not os.path.exists(ref.path) and read_shared_bytes(adopted) == b"data"
    assert os.path.basename(adopted.path).startswith(f"spava-{scheduler}-r1-video-")
    assert adopt_shared(adopted, scheduler) == adopted  # already ours
    with pytest.raises(FileNotFoundError):
        adopt_shared(ref, scheduler)


def test_sweeps_remove_only_dead_owners_files(tmp_path):
    shm, temp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir()
    temp.mkdir()
    dead, alive = owner_tag("dead01", pid=_dead_pid()), owner_tag("live01")
    dead_files = [new_ref_path(str(shm), f"r{i}", "frames", dead) for i in range(3)]
    live_files = [new_ref_path(str(shm), "r9", "ids", alive)]
    for path in dead_files + live_files:
        open(path, "wb").close()
    other = shm / "spava-r1-frames-0123abcd"  # an old-style name: no owner, never touched
    other.write_bytes(b"")
    (temp / f"spava-{dead}-x1y2").mkdir()
    (temp / f"spava-{dead}-x1y2" / "pipeline.yaml").write_text("model: {}\n")
    (temp / f"spava-{alive}-z3").mkdir()
    removed = sweep_orphans(str(shm), str(temp))
    assert sorted(removed) == sorted(dead_files + [str(temp / f"spava-{dead}-x1y2")])
    assert all(os.path.exists(p) for p in live_files) and other.exists() and (temp / f"spava-{alive}-z3").exists()
    assert sweep_owner(str(shm), alive) == [os.path.basename(live_files[0])]
    assert sorted(os.listdir(shm)) == [other.name]


def test_a_requests_files_are_swept_by_its_id_within_its_owner(tmp_path):
    owner, other = owner_tag("aa11"), owner_tag("bb22")
    mine = [new_ref_path(str(tmp_path), "r/1", name, owner) for name in ("ids", "positions")]
    kept = [new_ref_path(str(tmp_path), "r/10", "ids", owner), new_ref_path(str(tmp_path), "r/1", "ids", other)]
    for path in mine + kept:
        open(path, "wb").close()
    assert sorted(sweep_request(str(tmp_path), owner, "r/1")) == sorted(os.path.basename(p) for p in mine)
    assert all(os.path.exists(p) for p in kept)
    assert request_file_key("r/1") == request_file_key("r_1")  # why the scheduler checks live ids first


def test_zombies_and_missing_processes_are_dead():
    assert is_process_alive(os.getpid()) and not is_process_alive(_dead_pid()) and not is_process_alive(0)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        pass
    assert not is_process_alive(zombie.pid)
    zombie.wait()


def test_the_scheduler_side_imports_no_torch():
    code = ("import sys; import spava.comm.transport, spava.runtime.scheduler, spava.runtime.pipeline, "
            "spava.runtime.health, spava.cli, spava.run_command; print('torch' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert output == "False"
