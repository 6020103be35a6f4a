"""Fidelity cases whose scores depend on the approximated context rows, for any model family.

Runs in the parent process of the fidelity benchmark, on the CPU, with the family's tokenizer and
chat prompt (`Processor.build_inputs(question, document=...)`). Every case is a long document of
natural English (background windows of one corpus) with inserted sentences, and a question:

  multikey    6 needles "The special magic number for {key} is: {value}." in the first 62% of the
              document; every one is recalled (the same sentence again) in the last 23%; the
              question asks for one key's number.
  multivalue  4 needles "One of the special magic numbers for {key} is: {value}." for one key plus 2
              distractor keys; recalled together ("... for {key} are: v1, v2, v3, v4."); the question
              asks for all of them.
  vartrack    3 chains "VAR X = {value}." (first 30%) -> "VAR Y = VAR X." (35-62%); the recall
              "The value of VAR Y is {value}." (last 23%) needs both earlier chunks; the question
              asks for one chain's last variable.
  magicword   4 short needles "The {first} magic word is {word}." recalled in the last 23%; the
              question asks for the four words: the needed tokens are the ones most similar to the
              question, so query-aware selection should pass them and random selection should not.
  text        the document alone; the question asks what it is about.

What is scored (see `spava.eval.fidelity_stats`):
  recalls     teacher-forced value tokens of the recall sentences: the logits at the position before
              each value token come straight from a context row in a late chunk, which can copy the
              value only if the needle's tokens were passed to it (or sit in its anchor or chunk);
  background  next-token predictions at natural-text positions (inserted sentences excluded) in the
              last 7/8 of the context: KL against full attention, top-1 agreement, accuracy;
  answer      the greedy answer to the question (exact query rows), right when it holds every value.
Positions are global token indices; a position p scores the prediction of token p + 1.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import os
import random
from dataclasses import dataclass, field

from spava.models.inputs import PromptInputs

LICENSE_GLOB = "/usr/share/common-licenses/*"
STDLIB_MODULES = ("argparse", "asyncio", "collections", "dataclasses", "decimal", "email", "functools",
                  "inspect", "itertools", "json", "logging", "os", "pathlib", "pickle", "re", "shutil",
                  "socket", "subprocess", "threading", "typing", "unittest", "urllib.request", "zipfile")
KEYS = ("apple", "river", "candle", "mountain", "violin", "garden", "rocket", "pencil", "harbor", "lantern",
        "meadow", "falcon", "copper", "island", "thunder", "orchard", "glacier", "compass", "velvet", "canyon",
        "marble", "saddle", "beacon", "quartz")
VARIABLES = ("QPZ", "KTM", "WLD", "BRX", "NFE", "HJU", "ZOC", "YAV", "GIS", "MUE", "DRK", "PLT")
WORDS = ("pineapple", "umbrella", "giraffe", "volcano", "trombone", "cactus", "penguin", "lighthouse", "avocado",
         "saxophone", "kangaroo", "tornado", "hammock", "walrus", "origami", "zeppelin")
ORDINALS = ("first", "second", "third", "fourth")
TASKS = ("multikey", "multivalue", "vartrack", "magicword", "text")
SYSTEM_PROMPT = "You are a helpful assistant."
NEEDLE_DEPTHS = (0.04, 0.62)  # inserted facts lie in this part of the document
RECALL_DEPTHS = (0.77, 0.97)  # their recalls in this one: a later chunk for every method at W <= 4
FIRST_SCORED = 1 / 8  # background positions before this fraction of the context are not scored


@dataclass(frozen=True)
class ScoredSpan:
    """Teacher-forced tokens of one recalled value.

    Attributes:
        label: the task ("multikey", ...).
        unit: bootstrap unit (the case and the value).
        positions: global positions whose logits predict the value's tokens (token index - 1).
        token_ids: the tokens they must predict.
        source: global token range of the value where the document first states it (the needle).
        sentence: global token range of that needle's whole sentence.
    """

    label: str
    unit: str
    positions: tuple[int, ...]
    token_ids: tuple[int, ...]
    source: tuple[int, int]
    sentence: tuple[int, int]


@dataclass
class FidelityCase:
    """One prompt with everything its scores need (built once, sent to every rank)."""

    name: str
    task: str
    length: int  # the token budget it was built for (the prompt has at most this many)
    inputs: PromptInputs
    question: str
    answers: tuple[str, ...]  # strings a right answer contains (empty: the answer is not scored)
    recalls: list[ScoredSpan] = field(default_factory=list)
    background: tuple[int, ...] = ()  # scored natural-text positions
    inserted: list[tuple[int, int]] = field(default_factory=list)  # token ranges of inserted sentences

    @property
    def fingerprint(self) -> str:
        """A digest of the prompt and of what is scored: result files carry it, so a changed case is recomputed."""
        digest = hashlib.sha256(self.inputs.input_ids.numpy().tobytes())
        digest.update(repr((self.scored_positions, self.answers)).encode())
        return digest.hexdigest()[:12]

    @property
    def scored_positions(self) -> list[int]:
        """Every position whose final hidden state the ranks must return, sorted."""
        return sorted(set(self.background).union(*(span.positions for span in self.recalls)))


def natural_text(paths: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """(long natural English text, its sources): the given text files, else the system's license
    texts (about 60K tokens), else Python standard-library docstrings."""
    if not paths:
        paths = tuple(sorted({os.path.realpath(p) for p in glob.glob(LICENSE_GLOB) if os.path.isfile(p)}))
    pieces, sources = [], []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            pieces.append(handle.read())
        sources.append(path)
    if not pieces:  # not a Debian-like system: fall back to docstrings
        import importlib

        for name in STDLIB_MODULES:
            pieces.append(inspect.getdoc(importlib.import_module(name)) or "")
            sources.append(f"python stdlib docstring: {name}")
    return "\n\n".join(pieces), sources


def _value(rng: random.Random) -> str:
    return str(rng.randrange(1_000_000, 10_000_000))


def _spread(rng: random.Random, count: int, bounds: tuple[float, float]) -> list[float]:
    """`count` depths in `bounds`, one per equal slot, jittered inside it."""
    low, high = bounds
    width = (high - low) / count
    return [low + width * (i + 0.2 + 0.6 * rng.random()) for i in range(count)]


# An inserted sentence: (relative depth in the document, the sentence, the values it states).
Fact = tuple[float, str, tuple[str, ...]]


def _facts(task: str, rng: random.Random) -> tuple[list[Fact], list[Fact], str, tuple[str, ...]]:
    """(needles, recalls, question, answers) of one case; needles and recalls are `Fact`s."""
    if task == "multikey":
        keys = rng.sample(KEYS, 6)
        values = {key: _value(rng) for key in keys}
        sentence = "The special magic number for {} is: {}."
        needles = [(d, sentence.format(k, values[k]), (values[k],))
                   for d, k in zip(_spread(rng, 6, NEEDLE_DEPTHS), keys)]
        order = rng.sample(keys, 6)  # drawn before the depths: the cases of a seed stay the same
        recalls = [(d, sentence.format(k, values[k]), (values[k],)) for d, k in zip(_spread(rng, 6, RECALL_DEPTHS), order)]
        target = rng.choice(keys)
        question = f"What is the special magic number for {target}? Answer with the number only."
        return needles, recalls, question, (values[target],)
    if task == "multivalue":
        key, *others = rng.sample(KEYS, 3)
        values = [_value(rng) for _ in range(4)]
        facts = [(key, v) for v in values] + [(other, _value(rng)) for other in others]
        rng.shuffle(facts)
        needles = [(d, f"One of the special magic numbers for {k} is: {v}.", (v,))
                   for d, (k, v) in zip(_spread(rng, len(facts), NEEDLE_DEPTHS), facts)]
        ordered = [v for k, v in facts if k == key]  # recalled in document order
        recall = f"The special magic numbers for {key} are: {', '.join(ordered[:-1])} and {ordered[-1]}."
        recalls = [(rng.uniform(*RECALL_DEPTHS), recall, tuple(ordered))]
        question = f"What are all the special magic numbers for {key}? Answer with the numbers only."
        return needles, recalls, question, tuple(values)
    if task == "vartrack":
        names = rng.sample(VARIABLES, 6)
        chains = [(names[2 * i], names[2 * i + 1], _value(rng)) for i in range(3)]
        roots = _spread(rng, 3, (NEEDLE_DEPTHS[0], 0.30))
        links = _spread(rng, 3, (0.35, NEEDLE_DEPTHS[1]))
        needles = [(d, f"VAR {a} = {v}.", (v,)) for d, (a, _, v) in zip(roots, chains)]
        needles += [(d, f"VAR {b} = VAR {a}.", ()) for d, (a, b, _) in zip(links, rng.sample(chains, 3))]
        order = rng.sample(chains, 3)
        recalls = [(d, f"The value of VAR {b} is {v}.", (v,)) for d, (_, b, v) in zip(_spread(rng, 3, RECALL_DEPTHS), order)]
        _, target, value = rng.choice(chains)
        return needles, recalls, f"What is the value of VAR {target}? Answer with the number only.", (value,)
    if task == "magicword":
        words = rng.sample(WORDS, 4)
        needles = [(d, f"The {o} magic word is {w}.", (w,)) for d, o, w in zip(_spread(rng, 4, NEEDLE_DEPTHS),
                                                                                 ORDINALS, words)]
        recalls = [(d, f"The {o} magic word is {w}.", (w,))
                   for d, (o, w) in zip(_spread(rng, 4, RECALL_DEPTHS), rng.sample(list(zip(ORDINALS, words)), 4))]
        return needles, recalls, "What are the four magic words? Answer with the words only.", tuple(words)
    if task == "text":
        return [], [], "What is the text above about? Answer in one sentence.", ()
    raise ValueError(f"unknown fidelity task {task!r}; choose from {', '.join(TASKS)}")


def _document(background: str, inserts: list[Fact]) -> str:
    """`background` with each sentence inserted as its own line at the first line break or sentence
    end at or after its relative depth (measured in characters of the background)."""
    cuts = []
    for depth, sentence, _ in inserts:
        start = int(depth * len(background))
        ends = [at + offset for at, offset in ((background.find("\n", start), 0), (background.find(". ", start), 1))
                if at >= 0]
        cuts.append((min(ends, default=len(background)), sentence))
    pieces, cursor = [], 0
    for at, sentence in sorted(cuts):
        pieces += [background[cursor:at], "\n" + sentence]
        cursor = at
    return "".join(pieces) + background[cursor:]


def token_char_starts(tokenizer, ids: list[int]) -> tuple[str, list[int]]:
    """(concatenation of every token decoded on its own, each token's start in it)."""
    pieces = [tokenizer.decode([token]) for token in ids]
    starts, cursor = [], 0
    for piece in pieces:
        starts.append(cursor)
        cursor += len(piece)
    return "".join(pieces), starts


def _token_range(starts: list[int], total: int, begin: int, end: int) -> tuple[int, int]:
    """Tokens overlapping characters [begin, end) of the decoded text."""
    ends = starts[1:] + [total]
    first = next(i for i in range(len(starts)) if ends[i] > begin)
    last = next(i for i in range(first, len(starts)) if ends[i] >= end)
    return first, last + 1


def locate_case(tokenizer, inputs: PromptInputs, needles: list[Fact], recalls: list[Fact], task: str,
                name: str) -> tuple[list[ScoredSpan], list[tuple[int, int]]]:
    """(recall spans, inserted token ranges) of a built prompt, found in its decoded tokens.

    Raises:
        ValueError: a sentence did not survive tokenisation intact (it is not found).
    """
    ids = inputs.input_ids.tolist()
    text, starts = token_char_starts(tokenizer, ids)
    cursor, found, inserted = 0, {}, []
    for fact in sorted(needles + recalls):  # a needle and its recall may be the same text
        at = text.find(fact[1], cursor)
        if at < 0:
            raise ValueError(f"{name}: the inserted sentence {fact[1]!r} is not in the tokenised prompt")
        found[fact] = at
        inserted.append(_token_range(starts, len(text), at, at + len(fact[1])))
        cursor = at + len(fact[1])
    spans = []
    for recall in recalls:
        for value in recall[2]:
            needle = next(n for n in needles if value in n[2])
            source_at = found[needle] + needle[1].rindex(value)
            recall_at = found[recall] + recall[1].rindex(value)
            first, stop = _token_range(starts, len(text), recall_at, recall_at + len(value))
            spans.append(ScoredSpan(task, f"{name}/{value}", tuple(range(first - 1, stop - 1)),
                                    tuple(ids[first:stop]),
                                    _token_range(starts, len(text), source_at, source_at + len(value)),
                                    _token_range(starts, len(text), found[needle], found[needle] + len(needle[1]))))
    return spans, inserted


def background_positions(inputs: PromptInputs, inserted: list[tuple[int, int]], max_positions: int) -> tuple[int, ...]:
    """Natural-text positions p in the last 7/8 of the context (p + 1 still context, p and p + 1
    outside inserted sentences), evenly thinned to at most `max_positions`."""
    context_len = inputs.num_tokens - inputs.num_query_tokens
    blocked = set()
    for start, stop in inserted:
        blocked.update(range(start - 1, stop))
    first = int(context_len * FIRST_SCORED)
    candidates = [p for p in range(first, context_len - 1) if p not in blocked]
    if len(candidates) <= max_positions:
        return tuple(candidates)
    stride = len(candidates) / max_positions
    return tuple(candidates[int(i * stride)] for i in range(max_positions))


def build_case(processor, corpus: str, task: str, max_tokens: int, seed: int, max_background: int) -> FidelityCase:
    """One case of `task` with at most `max_tokens` prompt tokens, background from `corpus` at a
    seeded offset; `max_background` caps the scored natural-text positions."""
    rng = random.Random(f"{task}/{max_tokens}/{seed}")
    needles, recalls, question, answers = _facts(task, rng)
    num_chars = max_tokens * 4
    offset = rng.randrange(0, max(1, len(corpus) - 3 * num_chars))
    inputs = None
    for _ in range(8):  # fit the background to the token budget by measuring
        document = _document(corpus[offset: offset + num_chars], needles + recalls)
        inputs = processor.build_inputs(question, document=document, items=[], system_prompt=SYSTEM_PROMPT)
        if 0.97 * max_tokens <= inputs.num_tokens <= max_tokens:
            break
        num_chars = int(num_chars * (0.985 * max_tokens / inputs.num_tokens))
    if inputs.num_tokens > max_tokens:
        raise ValueError(f"could not fit a {task} case into {max_tokens} tokens")
    if inputs.num_tokens < 0.9 * max_tokens:
        raise ValueError(f"the background text ({len(corpus)} characters) is too short for {max_tokens}-token "
                         "prompts; give longer text files (--corpus) or lower --lengths")
    name = f"{task}_L{max_tokens}_s{seed}"
    spans, inserted = locate_case(processor.tokenizer, inputs, needles, recalls, task, name)
    return FidelityCase(name, task, max_tokens, inputs, question, answers if task != "text" else (), spans,
                        background_positions(inputs, inserted, max_background), inserted)
