"""`decode` stage: exact distributed decoding over the KV cache the prefill left on each rank.

The decode rank samples (greedy / temperature / top-k / top-p, seeded), streams every token to the
scheduler as a `TokenOutput`, and checks for cancellation between steps; the token is broadcast so
all prefill ranks step together. Returns the `ModelTaskOutput` of the request.
"""

from __future__ import annotations

import torch

from spava.comm.messages import ModelTaskOutput, TokenOutput
from spava.models import generation
from spava.models.family import get_family
from spava.models.generation import SamplingParams
from spava.progress import ProgressBar
from spava.stages.base import BadInputError, PrefillResult, Stage, StageContext


def sampling_params(defaults, overrides: dict) -> SamplingParams:
    """decode.* defaults updated by a request's sampling overrides; bad values are a BadInputError."""
    try:
        return generation.sampling_params(defaults, overrides)
    except ValueError as error:
        raise BadInputError(str(error)) from None


class TextStream:
    """Text deltas of a growing answer, never cutting a multi-byte character in two.

    Byte-level BPE tokens can end inside a UTF-8 character; decoding them alone gives U+FFFD. Only
    the tokens since the last complete delta are decoded (with a few before them for context, as
    the first may merge with its predecessor), so each step costs O(1), not O(answer).
    """

    def __init__(self, decode):
        self.decode = decode
        self.token_ids: list[int] = []
        self.prefix_offset = 0  # tokens before this are done; [prefix_offset, read_offset) is context
        self.read_offset = 0

    def push(self, token_ids: list[int]) -> str:
        self.token_ids.extend(token_ids)
        before = self.decode(self.token_ids[self.prefix_offset: self.read_offset], skip_special_tokens=True)
        after = self.decode(self.token_ids[self.prefix_offset:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # nothing new yet, or a character still incomplete
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        return after[len(before):]


class DecodeWorker(Stage):
    name = "decode"

    def __init__(self, context: StageContext, decode_config, model_config):
        self.context = context
        self.defaults = decode_config
        self.model_config = model_config
        self.processor = None
        self.eos_token_ids: tuple[int, ...] = ()
        self.runner = None  # the prefill stage's ModelRunner, bound by the worker (same process)

    @classmethod
    def from_config(cls, config, context: StageContext) -> "DecodeWorker":
        return cls(context, config.decode, config.model)

    def setup(self) -> None:
        self.processor = get_family(self.model_config).processor()
        self.eos_token_ids = self.processor.eos_token_ids()

    def bind(self, runner) -> None:
        self.runner = runner

    def process(self, result: PrefillResult) -> ModelTaskOutput:
        task, context = result.task, self.context
        params = sampling_params(self.defaults, task.sampling)
        is_decode_rank = result.state.plan.rank == result.state.plan.decode_rank

        bar = None if context.is_quiet or not is_decode_rank else ProgressBar("decode tokens", min_total=64)
        num_streamed = 0

        text_stream = TextStream(self.processor.decode)

        def on_token(token_ids: list[int]) -> None:
            nonlocal num_streamed
            context.send(TokenOutput(task.request_id, token_ids, text_stream.push(token_ids)))
            num_streamed += len(token_ids)
            if bar is not None:
                bar(num_streamed, params.max_new_tokens)

        output = self.runner.decode_loop(
            result.inputs, result.state, params, decode_text=self.processor.decode,
            eos_token_ids=tuple(t for t in self.eos_token_ids if t is not None), on_token=on_token,
            should_cancel=lambda: context.is_cancelled(task.request_id),
        )
        if bar is not None:
            bar.close()
        timings = {**result.state.timings, "prefill_stage_s": result.seconds, **output.timings}
        if self.runner.device.type == "cuda":
            timings["peak_gpu_gb"] = torch.cuda.max_memory_allocated(self.runner.device) / 2**30
        tokens = output.token_ids if is_decode_rank else []
        text = self.processor.decode(tokens, skip_special_tokens=True) if is_decode_rank else ""
        return ModelTaskOutput(task.request_id, context.worker_id, tokens, output.finish_reason, timings,
                               is_decode_rank, text, result.state.ctx.method.name)
