"""`spava run`: answer one question about one video (or image-less text) and print the answer.

Runs in the user's process: checks every input and option first (a bad path, option or config
fails in well under a second, before any worker starts), then starts the pipeline (or connects to
one with `--connect`), runs the request and closes the pipeline. A random-weight vision config with
no `--video` / `--document` is the demo: it gets a generated synthetic video, whether the config is
the built-in default or `configs/demo_cpu.yaml`. An `http(s)://` video is downloaded first (size
and time limits as `spava serve`'s). Output: the answer and a timing table, or with `--json` one
JSON object (`{"error": {...}}` on failure), or with `--json --stream` JSON lines (`{"delta": ...}`
per piece of text, then `{"result": {...}}` or `{"error": {...}}`).

Exit codes: 0 answered, 1 the request or the pipeline failed, 2 bad input / options / config,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM). Every failure is one line on stderr (and the
error object on stdout with `--json`); the pipeline is closed and its files removed first.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from spava.comm.shm import new_pipeline_id, owner_prefix, owner_tag
from spava.config import load_config
from spava.models.family import get_family
from spava.runtime.policy import media_path_error, sampling_params

DEMO_PROMPT = "What is happening in this video?"
URL_SCHEMES = ("http://", "https://")
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C (closing the pipeline), then exit 143."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


class RunFailure(Exception):
    """A failure to report: exit code, and the error object printed with --json."""

    def __init__(self, code: int, kind: str, stage: str, message: str, request_id: str = ""):
        super().__init__(message)
        self.code, self.kind, self.stage, self.request_id = code, kind, stage, request_id

    def as_json(self) -> dict:
        return {"error": {"kind": self.kind, "stage": self.stage, "message": str(self), "request_id": self.request_id}}


def _bad(message: str) -> RunFailure:
    return RunFailure(EXIT_BAD_INPUT, "bad_input", "cli", message)


def _read_document(path: str) -> str:
    problem = media_path_error(path, "document")
    if problem:
        raise _bad(problem)
    try:
        return Path(path).read_text()
    except UnicodeDecodeError:
        raise _bad(f"document file {path!r} is not UTF-8 text") from None
    except OSError as error:
        raise _bad(f"document file {path!r} cannot be read: {error.strerror}") from None


def fetch_url(url: str, directory: str, max_bytes: int, timeout_s: float) -> str:
    """Download `url` into `directory` (at most `max_bytes`, within `timeout_s`); returns the file."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    suffix = Path(url.split("?", 1)[0]).suffix[:8]
    path = os.path.join(directory, f"download{suffix}")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(path, "wb") as handle:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise _bad(f"video {url} is {declared} bytes, over --max-media-bytes={max_bytes}")
            total = 0
            while chunk := response.read(1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    raise _bad(f"video {url} is larger than --max-media-bytes={max_bytes}")
                if time.monotonic() > deadline:
                    raise _bad(f"downloading {url} took longer than --media-fetch-timeout={timeout_s:g} s")
                handle.write(chunk)
    except urllib.error.HTTPError as error:
        raise _bad(f"could not download video {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise _bad(f"could not download video {url}: {reason}") from None
    return path


def _load_config(args):
    overrides = list(args.overrides)
    if not args.verbose:
        overrides.append("runtime.log_level=WARNING")
    try:
        return load_config(args.config, overrides)
    except ValueError as error:
        raise _bad(str(error)) from None


def is_random_demo(config) -> bool:
    """A random-weight vision model: its answers are noise, and with no input it runs the demo video."""
    return config.model.path is None and config.model.gguf is None and get_family(config.model).has_vision


def _demo_video(directory: str) -> str:
    from spava.media.synthetic import write_synthetic_video

    return str(write_synthetic_video(Path(directory) / "demo.mp4", num_frames=32, height=120, width=160, fps=8.0))


def _prepare(args, config, tmp: str) -> tuple[object, str, str | None, dict]:
    """Check and resolve the request before anything starts: (video, prompt, document, sampling).
    The demo's video is a `Future` of its path: it is written while the pipeline starts."""
    prompt = DEMO_PROMPT if args.prompt is None else args.prompt
    if not prompt.strip():
        raise _bad("the prompt is empty; pass --prompt with a question")
    document = _read_document(args.document) if args.document else None
    sampling = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens is not None else {}
    try:
        sampling_params(config.decode, sampling)
    except ValueError as error:
        raise _bad(str(error).replace("max_new_tokens=", "--max-new-tokens ")) from None
    video = args.video
    if video and video.lower().startswith(URL_SCHEMES):
        video = fetch_url(video, tmp, args.max_media_bytes, args.media_fetch_timeout)
    elif video:
        problem = media_path_error(video, "video")
        if problem:
            raise _bad(problem)
    elif document is None and is_random_demo(config):
        video = _in_background(_demo_video, tmp)
    return video, prompt, document, sampling


def _in_background(function, *args) -> Future:
    future: Future = Future()

    def work() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as error:  # noqa: BLE001 - handed to the caller by result()
            future.set_exception(error)

    threading.Thread(target=work, daemon=True, name="spava-demo-video").start()
    return future


def _request_failure(error) -> RunFailure:
    code = EXIT_BAD_INPUT if error.kind == "bad_input" else EXIT_FAILED
    message = str(error)
    return RunFailure(code, error.kind, error.stage, message, error.request_id)


def _answer(args, config, tmp: str, emit) -> tuple[object, bool]:
    from spava.runtime.pipeline import Pipeline, RequestError

    video, prompt, document, sampling = _prepare(args, config, tmp)
    pipeline = (Pipeline.connect(args.connect, config) if args.connect
                else Pipeline.from_config(config, is_quiet=args.json))
    try:
        with pipeline:
            if isinstance(video, Future):
                video = video.result()
            handle = pipeline.submit(video, prompt, document=document, stream=args.stream, **sampling)
            if args.stream:
                for text in handle.tokens():
                    emit(text)
            return handle.result(), is_random_demo(config) and not args.connect
    except RequestError as error:
        raise _request_failure(error) from None
    except ConnectionError as error:
        raise RunFailure(EXIT_FAILED, "unhealthy", "client", str(error)) from None
    except ValueError as error:
        raise _bad(str(error)) from None
    except RuntimeError as error:
        raise RunFailure(EXIT_FAILED, "internal", "startup", str(error)) from None


def run(args) -> int:
    """`spava run`; see the module docstring."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    is_lines = args.json and args.stream

    def emit(text: str) -> None:
        if is_lines:
            print(json.dumps({"delta": text}), flush=True)
        elif not args.json:
            print(text, end="", flush=True)

    try:
        config = _load_config(args)
        with tempfile.TemporaryDirectory(prefix=owner_prefix(owner_tag(new_pipeline_id()))) as tmp:
            result, is_demo = _answer(args, config, tmp, emit)
    except RunFailure as failure:
        return _report(args, failure)
    except KeyboardInterrupt:
        return _report(args, RunFailure(EXIT_INTERRUPTED, "cancelled", "cli", "interrupted (Ctrl-C)"))
    except Terminated:
        return _report(args, RunFailure(EXIT_TERMINATED, "cancelled", "cli", "terminated (SIGTERM)"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    _print_result(args, result, is_demo)
    return 0


def _report(args, failure: RunFailure) -> int:
    print(f"spava run: {failure}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(failure.as_json()), flush=True)
    return failure.code


def _timing_table(timings: dict) -> str:
    rows = [(key.removesuffix("_s"), value) for key, value in timings.items() if key.endswith("_s")]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value * 1000:10.1f} ms" for name, value in rows)


def _print_result(args, result, is_demo: bool) -> None:
    fields = {**result.__dict__, "is_random_weights": is_demo}
    if args.json:
        print(json.dumps({"result": fields}) if args.stream else json.dumps(fields, indent=2), flush=True)
        return
    print() if args.stream else print(result.text)
    print(f"\n[{result.finish_reason}] {len(result.token_ids)} tokens | {result.num_prompt_tokens} prompt tokens "
          f"({result.num_visual_tokens} visual, {result.num_frames} frames) | attention {result.method} on "
          f"{result.world_size} ranks | config {result.config_hash}")
    print("timings:\n" + _timing_table(result.timings))
    if is_demo:
        print("\nnote: this config runs a Qwen2.5-VL with RANDOM weights, so the answer is noise; it shows every "
              "stage working. Pass --config with model.path=<local checkpoint> for real answers.")
