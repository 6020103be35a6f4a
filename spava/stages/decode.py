"""`decode` stage: exact distributed decoding over the KV cache the prefill left on each rank.

The decode rank samples (greedy / temperature / top-k / top-p, seeded), streams every token to the
scheduler as a `TokenOutput`, and checks for cancellation between steps; the token is broadcast so
all prefill ranks step together. Returns the `ModelTaskOutput` of the request.
"""

from __future__ import annotations

import dataclasses
import time

from spava.comm.messages import ModelTaskOutput, TokenOutput
from spava.models.generation import SamplingParams
from spava.stages.base import BadInputError, Stage, StageContext
from spava.stages.prefill import PrefillResult


def sampling_params(defaults, overrides: dict) -> SamplingParams:
    """decode.* defaults updated by a request's sampling overrides; bad values are a BadInputError."""
    values = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SamplingParams)}
    if unknown:
        raise BadInputError(f"unknown sampling option(s) {sorted(unknown)}")
    values.update(overrides)
    for key in ("stop_token_ids", "stop_strings"):
        if key in values:
            values[key] = tuple(values[key])
    try:
        return SamplingParams(**values)
    except (TypeError, ValueError) as error:
        raise BadInputError(f"sampling: {error}") from None


def _progress_bar(total: int, is_quiet: bool, min_total: int = 64):
    """A tqdm bar on stderr for long generations (None when quiet or short)."""
    if is_quiet or total < min_total:
        return None
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc="decode tokens", file=sys.stderr, leave=False)


class DecodeWorker(Stage):
    name = "decode"

    def __init__(self, context: StageContext, decode_config, tokenizer_path: str | None, eos_token_ids=(),
                 family: str = "qwen2_5_vl"):
        self.context = context
        self.family = family
        self.defaults = decode_config
        self.tokenizer_path = tokenizer_path
        self.eos_token_ids = tuple(eos_token_ids)
        self.tokenizer = None
        self.runner = None  # the prefill stage's ModelRunner, bound by the worker (same process)

    @classmethod
    def from_config(cls, config, context: StageContext) -> "DecodeWorker":
        return cls(context, config.decode, config.model.tokenizer or config.model.path, family=config.model.family)

    def setup(self) -> None:
        if self.family == "text":
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path, local_files_only=True)
            return
        from spava.models.qwen2_5_vl.prompt import load_qwen_tokenizer

        self.tokenizer = load_qwen_tokenizer(self.tokenizer_path)
        if not self.eos_token_ids:
            self.eos_token_ids = (self.tokenizer.convert_tokens_to_ids("<|im_end|>"), self.tokenizer.eos_token_id)

    def bind(self, runner) -> None:
        self.runner = runner
        if not self.eos_token_ids and hasattr(runner.adapter, "eos_token_ids"):
            self.eos_token_ids = tuple(runner.adapter.eos_token_ids())

    def process(self, result: PrefillResult) -> ModelTaskOutput:
        task, context = result.task, self.context
        params = sampling_params(self.defaults, task.sampling)
        is_decode_rank = result.state.plan.rank == result.state.plan.decode_rank

        bar = _progress_bar(params.max_new_tokens, context.is_quiet or not is_decode_rank)

        def on_token(token_ids: list[int]) -> None:
            context.send(TokenOutput(task.request_id, token_ids, self.tokenizer.decode(token_ids)))
            if bar is not None:
                bar.update(len(token_ids))

        start = time.perf_counter()
        output = self.runner.decode_loop(
            result.inputs, result.state, params, decode_text=self.tokenizer.decode,
            eos_token_ids=tuple(t for t in self.eos_token_ids if t is not None), on_token=on_token,
            should_cancel=lambda: context.is_cancelled(task.request_id),
        )
        if bar is not None:
            bar.close()
        timings = {"prefill_s": result.seconds, "decode_s": time.perf_counter() - start}
        tokens = output.token_ids if is_decode_rank else []
        text = self.tokenizer.decode(tokens, skip_special_tokens=True) if is_decode_rank else ""
        return ModelTaskOutput(task.request_id, context.worker_id, tokens, output.finish_reason, timings,
                               is_decode_rank, text)
