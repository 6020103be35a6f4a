"""The pure parts of launcher-started worlds: what torchrun and deepspeed tell a process, the head's
addresses, devices, the head's share of the workers and the torchrun command `spava launch` runs."""

from __future__ import annotations

import pytest

from spava.cli import build_parser
from spava.runtime.launch import local_specs
from spava.runtime.node import head_node, parse_args, resolve
from spava.runtime.nodes import HeadAddresses, LaunchedRank, launched_device
from spava.runtime.serve import torchrun_argv, uses_torchrun

TORCHRUN = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
            "GROUP_WORLD_SIZE": "2", "MASTER_ADDR": "gpu01", "MASTER_PORT": "29500"}
DEEPSPEED = {"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "LOCAL_SIZE": "2", "CROSS_RANK": "1",
             "CROSS_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}


def test_torchrun_environment():
    rank = LaunchedRank.from_environ(TORCHRUN)
    assert rank == LaunchedRank(rank=5, world_size=8, local_rank=1, local_world_size=4, node_rank=1, num_nodes=2,
                                master_addr="gpu01")
    assert not rank.is_head and not rank.is_single_node and rank.node_name == "node1"


def test_deepspeed_environment_with_uneven_nodes():
    # a hostfile "a slots=1 / b slots=2": the node comes from CROSS_RANK, not from RANK // LOCAL_SIZE
    rank = LaunchedRank.from_environ(DEEPSPEED)
    assert (rank.rank, rank.local_rank, rank.local_world_size, rank.node_rank, rank.num_nodes) == (2, 1, 2, 1, 2)


def test_plain_environment_derives_the_node():
    rank = LaunchedRank.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                      "MASTER_ADDR": "h"})
    assert (rank.node_rank, rank.num_nodes) == (1, 2)
    single = LaunchedRank.from_environ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h"})
    assert single.is_head and single.is_single_node and single.node_name == "node0"


@pytest.mark.parametrize("change, message", [
    ({"RANK": None}, "RANK is not set"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
    ({"RANK": "8"}, "RANK=8 is outside [0, WORLD_SIZE=8)"),
    ({"LOCAL_RANK": "4"}, "LOCAL_RANK=4 is outside [0, 4)"),
    ({"MASTER_ADDR": ""}, "MASTER_ADDR is not set"),
    ({"GROUP_RANK": "2"}, "node rank 2 is outside [0, 2)"),
])
def test_bad_environment_names_the_variable(change, message):
    environ = {key: value for key, value in {**TORCHRUN, **change}.items() if value is not None}
    with pytest.raises(ValueError) as error:
        LaunchedRank.from_environ(environ)
    assert message in str(error.value)


def test_world_must_match_the_yaml():
    rank = LaunchedRank.from_environ(TORCHRUN)
    rank.check_world(8)
    with pytest.raises(ValueError, match=r"WORLD_SIZE=8 .* 3 model ranks \(encode.devices \+ prefill.devices\)"):
        rank.check_world(3)


def test_device_rule():
    assert launched_device("cuda:5", 1) == "cuda:1"  # the YAML lists every node's ranks; LOCAL_RANK picks the GPU
    assert launched_device("cuda", 0) == "cuda:0"
    assert launched_device("cpu", 3) == "cpu"


def test_head_addresses():
    named = HeadAddresses("gpu01", 29600)
    assert named.control_address == "tcp://gpu01:29600" and named.data_address == "tcp://gpu01:29601"
    assert named.control_bind == "tcp://*:29600" and named.data_bind == "tcp://*:29601"  # a name: every interface
    literal = HeadAddresses("10.0.0.1", 4000)
    assert literal.control_bind == "tcp://10.0.0.1:4000" and literal.data_bind == "tcp://10.0.0.1:4001"
    assert HeadAddresses("fe80::1", 4000).control_address == "tcp://[fe80::1]:4000"
    with pytest.raises(ValueError, match="--port 65535"):
        HeadAddresses("h", 65535)
    with pytest.raises(ValueError, match="--host"):
        HeadAddresses("", 4000)


def test_entry_point_resolves_the_head_and_its_workers():
    environ = {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "0",
               "GROUP_WORLD_SIZE": "3", "MASTER_ADDR": "10.0.0.1"}
    launched, config, addresses = resolve(parse_args(["--local_rank=0", "--port", "29700"]), environ)
    assert config.runtime.control_address == "tcp://10.0.0.1:29700"  # the default demo: 1 encoder + 2 prefill
    head = head_node(launched, addresses)
    assert head.model_ranks == (0,) and head.data_address == "tcp://10.0.0.1:29701"
    assert [s.worker_id for s in local_specs(config, head.model_ranks)] == ["video-0", "layout-0", "model-0"]
    single = LaunchedRank.from_environ({**environ, "LOCAL_WORLD_SIZE": "3", "GROUP_WORLD_SIZE": "1"})
    assert head_node(single, addresses).data_address is None  # one node: ranks map the head's files
    with pytest.raises(ValueError, match="--local_rank=1 but LOCAL_RANK=0"):
        resolve(parse_args(["--local_rank=1"]), environ)
    with pytest.raises(ValueError, match="WORLD_SIZE=3"):
        resolve(parse_args(["prefill.devices=[cpu]"]), environ)


def _launch_args(*argv: str):
    return build_parser().parse_args(["launch", *argv])


def test_spava_launch_runs_torchrun():
    assert not uses_torchrun(_launch_args("--config", "x.yaml"))
    args = _launch_args("--nnodes", "2", "--rdzv-endpoint", "gpu01:29400", "--rdzv-conf", "is_host=1", "--port", "29700",
                        "--config", "x.yaml", "runtime.secret=s")
    argv = torchrun_argv(args, 8)
    assert argv[1:] == ["-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "4", "--max-restarts", "0",
                        "--rdzv-backend", "c10d", "--rdzv-endpoint", "gpu01:29400", "--rdzv-conf", "is_host=1",
                        "-m", "spava.runtime.node",
                        "--port", "29700", "--config", "x.yaml", "runtime.secret=s"]
    static = torchrun_argv(_launch_args("--nnodes", "2", "--node-rank", "1", "--master-addr", "gpu01"), 2)
    assert static[static.index("--node-rank"):static.index("-m", 3)] == [
        "--node-rank", "1", "--master-addr", "gpu01", "--master-port", "29500"]
    one = torchrun_argv(_launch_args("--nnodes", "1", "--nproc-per-node", "2"), 2)
    assert "--standalone" in one


@pytest.mark.parametrize("argv, world_size, message", [
    (("--rdzv-endpoint", "h:1"), 2, "--nnodes N"),
    (("--nnodes", "2", "--rdzv-endpoint", "h:1"), 3, "do not split evenly over 2 nodes"),
    (("--nnodes", "2", "--nproc-per-node", "2", "--rdzv-endpoint", "h:1"), 2, "= 4 processes"),
    (("--nnodes", "2"), 2, "--rdzv-endpoint HEAD:PORT (c10d), or --node-rank R and --master-addr"),
    (("--nnodes", "2", "--rdzv-endpoint", "h:1", "--node-rank", "0"), 2, "not both"),
    (("--nnodes", "2", "--rdzv-conf", "is_host=1", "--node-rank", "0", "--master-addr", "h"), 2, "pass --rdzv-endpoint"),
])
def test_spava_launch_refuses_incomplete_node_options(argv, world_size, message):
    with pytest.raises(ValueError) as error:
        torchrun_argv(_launch_args(*argv), world_size)
    assert message in str(error.value)


def test_a_collective_failing_on_a_gone_peer_is_a_lost_peer():
    import torch.distributed as dist

    from spava.comm.collectives import is_peer_failure
    from spava.comm.messages import ModelTaskReq
    from spava.runtime.roles import PeerLostError, failing_on_lost_peers

    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [10.0.0.2]:4000")
    assert is_peer_failure(gloo) and is_peer_failure(dist.DistBackendError("NCCL watchdog: remote exited"))
    assert not is_peer_failure(RuntimeError("shape mismatch")) and not is_peer_failure(ValueError("x"))

    def handler(error):
        def run(task):
            raise error
        return failing_on_lost_peers({ModelTaskReq: run})[ModelTaskReq]

    with pytest.raises(PeerLostError, match="another model rank stopped answering .* Connection closed by peer"):
        handler(gloo)(None)
    with pytest.raises(RuntimeError, match="^shape mismatch$"):  # anything else stays what it was (internal)
        handler(RuntimeError("shape mismatch"))(None)
