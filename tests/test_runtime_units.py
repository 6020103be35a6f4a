"""Runtime rules without processes: the restart budget is a rate, a worker's memory of cancellations
is bounded, worker states say the truth, and every error kind the runtime sends is a known one."""

from __future__ import annotations

import ast
import dataclasses
import glob
import time
import typing

import pytest

from spava.comm.messages import SubmitReq, VideoOptions, VideoTaskReq, decode_message, encode_message
from spava.config import VideoConfig, load_config
from spava.media.sampling import FrameSampling
from spava.models import generation
from spava.runtime.health import Health, WorkerLoss
from spava.runtime.launch import WorkerSpec, worker_specs
from spava.runtime.policy import ERROR_KINDS, Admission, RestartBudget, resolve_options, resolve_sampling, sampling_params
from spava.runtime.state import WorkerState
from spava.runtime.worker import RecentIds


def test_restart_budget_is_a_rate_not_a_lifetime_count():
    budget = RestartBudget(max_restarts=3, window_s=600.0)
    day = 86_400.0
    for k in range(100):  # a crash a day for 100 days: always restarted
        assert budget.can_restart(k * day)
        budget.record(k * day)
    now = 100 * day
    for k in range(3):  # three quick crashes spend the budget ...
        assert budget.can_restart(now + k)
        budget.record(now + k)
    assert not budget.can_restart(now + 3) and budget.num_recent == 3
    assert budget.seconds_until_restart(now + 3) == 597.0
    assert budget.can_restart(now + 600.0)  # ... until the oldest leaves the window


def test_no_restarts_allowed_means_none():
    budget = RestartBudget(max_restarts=0, window_s=10.0)
    assert not budget.can_restart(0.0) and budget.seconds_until_restart(0.0) == float("inf")


def test_cancelled_ids_are_bounded_and_oldest_go_first():
    ids = RecentIds(max_size=100)
    for k in range(10_000):
        ids.add(f"r{k}")
    assert len(ids) == 100 and "r9999" in ids and "r9900" in ids and "r9899" not in ids
    ids.add("r9900")  # seen again: the newest now
    ids.add("new")
    assert "r9900" in ids and "r9901" not in ids
    ids.discard("new")
    assert "new" not in ids


def test_worker_states_say_what_they_are():
    state = WorkerState(WorkerSpec("layout-0", "layout", 0))
    assert state.status_word() == "starting" and not state.is_ready
    state.enter("ready")
    assert state.status_word() == "idle"
    state.request_id = "r1"
    assert state.status_word() == "busy"
    state.enter("dead")
    assert state.status_word() == "dead" and state.request_id is None and not state.is_idle
    state.enter("restarting")
    assert state.status_word() == "restarting"


def _health(phases: dict[str, str], budgets=None, lost: str = "") -> Health:
    config = load_config()
    workers = {spec.worker_id: WorkerState(spec, phase=phases.get(spec.worker_id, "ready"))
               for spec in worker_specs(config)}
    health = Health(workers, launcher=None, runtime=config.runtime)
    health.restart_budgets.update(budgets or {})
    health.lost_detail = lost
    return health


def test_health_is_derived_from_the_workers():
    assert _health({}).status() == (True, "")
    assert _health({"layout-0": "restarting", "model-1": "restarting"}).status()[0]  # coming back: requests wait
    spent = RestartBudget(1, 600.0)
    spent.record(0.0)
    is_healthy, detail = _health({"layout-0": "dead"}, {"layout-0": spent}).status(now=100.0)
    assert not is_healthy and "every layout worker is down" in detail and "next restart in 500 s" in detail
    is_healthy, detail = _health({"model-2": "dead"}).status()
    assert not is_healthy and "the model ranks are down" in detail
    assert _health({}, lost="lost host node1").status() == (False, "lost host node1")


class _FakeLauncher:
    """Worker processes as the health check sees them: exit codes to report, kills and starts made."""

    def __init__(self):
        self.exit_codes: dict[str, int] = {}
        self.killed: list[str] = []
        self.started: list[str] = []

    def exit_code(self, worker_id):
        return self.exit_codes.get(worker_id)

    def kill(self, worker_id):
        self.killed.append(worker_id)
        self.exit_codes.pop(worker_id, None)

    def start(self, spec, dist_port=0):
        self.started.append(spec.worker_id)

    def is_local(self, worker_id):
        return True


def _checked_health(overrides=()):
    config = load_config(None, list(overrides))
    workers = {spec.worker_id: WorkerState(spec, phase="ready") for spec in worker_specs(config)}
    launcher = _FakeLauncher()
    return Health(workers, launcher, config.runtime), launcher, workers


def test_health_reports_a_dead_worker_with_its_request_and_restarts_it():
    health, launcher, workers = _checked_health()
    workers["layout-0"].request_id = "r1"
    launcher.exit_codes["layout-0"] = -9
    report = health.check(now=time.monotonic())
    assert report.losses == [WorkerLoss("layout-0", "layout", "r1", "was killed by SIGKILL")]
    assert launcher.killed == ["layout-0"] and launcher.started == ["layout-0"]
    assert workers["layout-0"].phase == "restarting" and workers["layout-0"].request_id is None
    assert not report.is_model_group_killed and report.unhealthy_reason == "" and health.is_healthy()
    assert health.check(now=time.monotonic()).losses == []  # reported once


def test_health_with_no_restarts_left_reports_the_stages_that_cannot_be_served():
    health, launcher, workers = _checked_health(["runtime.max_worker_restarts=0"])
    launcher.exit_codes["layout-0"] = 3
    report = health.check(now=time.monotonic())
    assert launcher.started == [] and workers["layout-0"].phase == "dead"
    assert report.unhealthy_reason == ("every layout worker is down (exited with code 3) and "
                                       "runtime.max_worker_restarts=0 restarts nothing")
    assert report.down_stages == ("video_queue", "video", "layout_queue", "layout", "decoded_wait")
    assert health.check(now=time.monotonic()).unhealthy_reason == ""  # only when it becomes unhealthy


def test_a_dead_model_rank_restarts_the_whole_model_group():
    health, launcher, workers = _checked_health()
    workers["model-1"].request_id, workers["model-1"].host = "r2", "node0"
    launcher.exit_codes["model-1"] = 1
    report = health.check(now=time.monotonic())
    assert report.losses == [WorkerLoss("model-1", "model", "r2", "exited with code 1", "node0")]
    assert report.is_model_group_killed
    model_ids = ["model-0", "model-1", "model-2"]
    assert launcher.killed == model_ids and launcher.started == model_ids
    assert all(workers[w].phase == "restarting" for w in model_ids) and health.is_healthy()


class _FakeHealth:
    def __init__(self, reason: str = ""):
        self.reason = reason

    def status(self):
        return (not self.reason, self.reason)


def test_admission_decides_in_order_and_resolves_the_options(tmp_path):
    config = load_config(None, ["runtime.max_queued_requests=2"])
    admission = Admission(config.video, config.decode, config.runtime.max_queued_requests, _FakeHealth())
    submit = SubmitReq("r1", "what happens?", "none", video_options={"max_frames": 32}, sampling={"top_k": 3})
    decision = admission.check(submit, num_in_flight=1, ids_in_use=set())
    assert decision.is_admitted and decision.options.max_frames == 32 and decision.sampling == {"top_k": 3}
    refusals = [
        (admission.check(submit, num_in_flight=2, ids_in_use=set()), "overloaded", "runtime.max_queued_requests=2"),
        (admission.check(submit, num_in_flight=0, ids_in_use={"r1"}), "bad_input", "'r1' is already in use"),
        (admission.check(SubmitReq("r2", " ", "none"), num_in_flight=0, ids_in_use=set()), "bad_input",
         "the prompt is empty"),
        (admission.check(SubmitReq("r3", "hi", "path", str(tmp_path)), num_in_flight=0, ids_in_use=set()),
         "bad_input", "is a directory"),
        (admission.check(SubmitReq("r4", "hi", "none", sampling={"top_p": 2.0}), num_in_flight=0, ids_in_use=set()),
         "bad_input", "top_p"),
    ]
    sick = Admission(config.video, config.decode, 2, _FakeHealth("every layout worker is down"))
    refusals.append((sick.check(submit, num_in_flight=5, ids_in_use={"r1"}), "unhealthy",
                     "every layout worker is down"))  # health is checked first
    for decision, kind, message in refusals:
        assert not decision.is_admitted and decision.kind == kind and message in decision.message


def test_max_new_tokens_is_bounded_at_admission():
    decode = load_config(None, ["decode.max_allowed_new_tokens=100"]).decode
    assert sampling_params(decode, {"max_new_tokens": 100}).max_new_tokens == 100
    with pytest.raises(ValueError, match="decode.max_allowed_new_tokens=100"):
        sampling_params(decode, {"max_new_tokens": 101})


def test_request_video_options_are_typed_and_checked_at_admission():
    config = load_config()
    options = resolve_options(config.video, {"fps": None, "num_frames": 8, "start_time": 1})
    assert isinstance(options, VideoOptions) and options.num_frames == 8 and options.fps is None
    assert options.start_time == 1.0 and isinstance(options.start_time, float)  # typed as the message says
    assert options.max_frames == config.video.max_frames  # what the request leaves is the pipeline's
    task = VideoTaskReq("r1", "path", "/v.mp4", None, options)
    assert decode_message(encode_message(task)) == task  # msgpack, no pickle
    for overrides, message in [({"backend": "pyav"}, "unknown video option(s) ['backend']"),
                               ({"num_workers": 2}, "unknown video option(s) ['num_workers']"),
                               ({"fps": -1.0}, "FrameSampling.fps must be a positive"),
                               ({"num_frames": 8}, "mutually exclusive"),
                               ({"min_decoded_fraction": "most"}, "VideoOptions.min_decoded_fraction: expected float"),
                               ({"min_decoded_fraction": 1.5}, "min_decoded_fraction must lie in [0, 1]")]:
        with pytest.raises(ValueError) as error:
            resolve_options(config.video, overrides)
        assert message in str(error.value)


def test_video_options_are_the_video_settings_a_request_may_change():
    """VideoOptions mirrors video.* less what is per pipeline (how and how many decoders), field by
    field and type by type, and each of them is a frame-sampling field or the truncation threshold."""
    per_pipeline = {"backend", "num_workers", "num_decoders"}
    config_types = typing.get_type_hints(VideoConfig)
    option_types = typing.get_type_hints(VideoOptions)
    assert option_types == {name: hint for name, hint in config_types.items() if name not in per_pipeline}
    sampling_names = {f.name for f in dataclasses.fields(FrameSampling)}
    assert set(option_types) - sampling_names == {"min_decoded_fraction"}


def test_sampling_overrides_merge_over_the_decode_defaults():
    decode = load_config(None, ["decode.temperature=0.7"]).decode
    params = generation.sampling_params(decode, {"stop_strings": ["END"], "top_k": 5})
    assert (params.temperature, params.top_k, params.stop_strings) == (0.7, 5, ("END",))
    assert params.max_new_tokens == decode.max_new_tokens
    with pytest.raises(ValueError, match=r"unknown sampling option\(s\) \['nucleus'\]"):
        generation.sampling_params(decode, {"nucleus": 0.5})
    with pytest.raises(ValueError, match="top_p must lie in"):
        generation.sampling_params(decode, {"top_p": 0.0})
    assert resolve_sampling(decode, {"stop_strings": "END", "stop_token_ids": 7}) == {
        "stop_strings": ["END"], "stop_token_ids": [7]}


def _literal_kinds() -> list[tuple[str, str]]:
    """(where, kind) for every error kind the runtime writes as a literal: `_fail(request, stage,
    kind, ...)`, `ErrorOutput(..., kind, ...)`, `TaskError(..., kind, ...)`, `RequestError(..., kind, ...)`
    and `_fail_all(kind, ...)` / `close(kind, ...)` of the client."""
    positions = {"_fail": 2, "ErrorOutput": 2, "TaskError": 3, "RequestError": 2, "_fail_all": 0, "close": 0}
    found = []
    for path in sorted(glob.glob("spava/runtime/*.py")):
        for node in ast.walk(ast.parse(open(path).read())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            index = positions.get(name)
            if index is None or len(node.args) <= index:
                continue
            argument = node.args[index]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                found.append((f"{path}:{node.lineno}", argument.value))
    return found


def test_every_error_kind_the_runtime_sends_is_a_known_one():
    kinds = _literal_kinds()
    assert len(kinds) > 15  # the scan sees the calls
    assert [(where, kind) for where, kind in kinds if kind not in ERROR_KINDS] == []
    from spava.server.errors import KIND_STATUS

    assert set(KIND_STATUS) == set(ERROR_KINDS)  # the HTTP server maps each kind to a status
