"""SODA's likelihood benchmarks: which candidate of an item does the model find more likely?

- sWUGGY (``speed/sWUGGY``: ``id``, audio ``positive``/``negative``, ``positive_word``/``negative_word``): a
  spoken word against a spoken non-word.
- sBLIMP (``speed/sBLIMP``: ``id``, audio ``positive``/``negative``, ``positive_transcription``/
  ``negative_transcription``): a grammatical spoken sentence against its ungrammatical twin; accuracy per
  subtype too (see ``subtype_of``).
- SALMon (``slprl/salmon``, config ``all``: ``ind``, ``task``, ``positive_audio``/``negative_audio``): acoustic
  consistency and alignment; accuracy per task and over all pairs.
- tWUGGY / tBLIMP: the same pairs as text (sWUGGY's words; sBLIMP's transcriptions, lowercased).
- HellaSwag (``ctx_a``/``ctx_b`` or ``ctx``, ``activity_label``, four ``endings``, ``label``): which ending
  continues the context, as lm-evaluation-harness scores it (``hellaswag_request``).

Audio and text candidates are scored as ``scoring.likelihood_item`` builds them (mean log-probability of
the content tokens after BOS and the opening marker); a pair is right when the positive scores strictly
higher. Rows are read, decoded and encoded a chunk at a time (the audio of sBLIMP does not fit in memory
at once); only the token ids are kept, and every candidate of every item is scored in one batched call.
A row that cannot be used (missing field, undecodable audio, empty text) is skipped and reported by its
``file:row``.
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from megatron_soda.codec.audio_io import AudioRejected
from megatron_soda.data.formats import Document, Kind, Segment, render
from megatron_soda.evaluation.audio import clip_key
from megatron_soda.evaluation.base import EvalContext, Skipped, TaskResult, TaskSpec, register
from megatron_soda.evaluation.datasets import base_dir_of, count_rows, decode_audio, missing_fields, read_rows
from megatron_soda.evaluation.scoring import ScoringItem, likelihood_item, mean_log_probs

CHUNK_ROWS = 128
"""Rows whose audio is decoded and encoded together (a few hundred clips: bounded memory, full codec batches)."""

SUBTYPE_FIELDS = ("subtype", "type", "phenomenon", "paradigm", "UID")
"""sBLIMP columns naming a pair's subtype, first present wins (the public card lists none; ZeroSpeech's
gold file calls it ``subtype``, BLiMP ``UID``)."""

PAIR_RULE = "a pair is right when the positive scores strictly higher (a tie counts as wrong)"


class _Skip(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Question:
    """One benchmark item: its candidates' scoring items and which one is right."""

    source: str
    record: Dict[str, Any]
    """what the per-item record shows besides the scores (id, words, task, ...)."""
    candidates: List[ScoringItem]
    label: int = 0
    group: Optional[str] = None
    """its breakdown group (SALMon's task, sBLIMP's subtype)."""


@dataclass
class Collected:
    questions: List[Question] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)


# ---- reading ---------------------------------------------------------------------------------------


def _progress(context: EvalContext, total: Optional[int], desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not context.settings.progress, file=sys.stderr)


def _rows(
    task: str, data_path: str, context: EvalContext, columns, config=None, split="train"
) -> Iterator[Tuple[str, Any]]:
    """The first ``settings.limit`` rows of the data's ``split`` (or its only one), with a progress bar."""
    limit = context.settings.limit
    total = None
    if context.settings.progress:
        total = count_rows(data_path, split, config)
        total = total if limit is None else min(total, limit)
    with _progress(context, total, f"{task}: reading", "row") as bar:
        for source, row in itertools.islice(read_rows(data_path, columns, split, config), limit):
            yield source, row
            bar.update(1)


class AudioCells:
    """Audio cells -> ``likelihood_item``s, encoded through the context's (cached) ``AudioEncoder``."""

    def __init__(self, task: str, data_path: str, context: EvalContext):
        if context.audio is None:
            raise ValueError(f"{task} scores speech: it needs a codec (--codec-path, or --codec-random-init for tests)")
        if context.audio.num_codebooks != context.layout.num_codebooks:
            raise ValueError(
                f"{task}: the codec gives {context.audio.num_codebooks} codebooks per frame, the tokenizer's layout "
                f"{context.layout.num_codebooks}: use the codec the model was trained with"
            )
        self.context = context
        self.base_dir = base_dir_of(data_path)

    def prepare(self, value, where: str):
        try:
            wave, rate = decode_audio(value, self.base_dir, where)
        except AudioRejected as error:
            raise _Skip(error.reason, str(error)) from None
        return clip_key(wave, rate), wave, rate

    def items(self, prepared: Sequence) -> List[ScoringItem]:
        layout, codebooks = self.context.layout, self.context.settings.codebooks
        return [
            likelihood_item(Kind.AUDIO, layout.codes_to_ids(codes), layout, codebooks)
            for codes in self.context.audio.encode(prepared)
        ]


class TextCells:
    """Text cells -> ``<|text_start|>T<|text_end|>`` items (``lowercase`` for tBLIMP, as SODA's script)."""

    def __init__(self, context: EvalContext, lowercase: bool = False):
        self.context = context
        self.lowercase = lowercase

    def prepare(self, value, where: str):
        if not isinstance(value, str):
            raise _Skip("bad_field", f"{where}: a {type(value).__name__}, not text")
        text = value.lower() if self.lowercase else value
        ids = self.context.tokenizer.encode_text(text) if text.strip() else []
        if not len(ids):
            raise _Skip("empty_text", f"{where}: empty text")
        return ids

    def items(self, prepared: Sequence) -> List[ScoringItem]:
        return [likelihood_item(Kind.TEXT, ids, self.context.layout) for ids in prepared]


@dataclass(frozen=True)
class PairSchema:
    """Where a pair task finds its candidates and what its record shows."""

    positive: str
    negative: str
    id: str
    shown: Tuple[str, ...] = ()
    """other columns copied into the per-item record."""
    grouped_by: Optional[Callable[[dict], str]] = None
    group_name: str = "group"
    extra_columns: Tuple[str, ...] = ()
    """columns ``grouped_by`` reads."""
    config: Optional[str] = None
    """the Hub config wanted when the data holds several (SALMon: ``all``)."""


def collect_pairs(task: str, data_path: str, context: EvalContext, cells, schema: PairSchema) -> Collected:
    """Questions (positive first) of a pair task; unusable rows skipped."""
    out = Collected()
    chunk: List[Tuple[str, dict, list]] = []

    def flush():
        items = cells.items([p for _, _, pair in chunk for p in pair])
        for index, (source, row, _) in enumerate(chunk):
            record = {"id": row.get(schema.id), **{c: row.get(c) for c in schema.shown}}
            group = schema.grouped_by(row) if schema.grouped_by else None
            if group is not None:
                record[schema.group_name] = group
            out.questions.append(Question(source, record, items[2 * index : 2 * index + 2], 0, group))
        chunk.clear()

    columns = [schema.id, schema.positive, schema.negative, *schema.shown, *schema.extra_columns]
    for source, row in _rows(task, data_path, context, list(dict.fromkeys(columns)), schema.config):
        if isinstance(row, Skipped):
            out.skipped.append(row)
            continue
        try:
            missing = missing_fields(row, (schema.positive, schema.negative))
            if missing:
                raise _Skip("missing_field", f"{source}: no {' or '.join(missing)}")
            pair = [cells.prepare(row[c], f"{source} {c}") for c in (schema.positive, schema.negative)]
        except _Skip as skip:
            out.skipped.append(Skipped(source, skip.reason, str(skip)))
            continue
        chunk.append((source, row, pair))
        if len(chunk) >= CHUNK_ROWS:
            flush()
    if chunk:
        flush()
    return out


def subtype_of(row: dict) -> str:
    """sBLIMP's subtype: the first ``SUBTYPE_FIELDS`` column present; else the id without its trailing
    number (``anaphor_gender_agreement_001`` -> ``anaphor_gender_agreement``); else ``unknown`` (an id with
    no such number, e.g. a file hash, names no subtype)."""
    for name in SUBTYPE_FIELDS:
        if isinstance(row.get(name), str) and row[name].strip():
            return row[name].strip()
    text = str(row.get("id", ""))
    stem = re.sub(r"([-_.]?\d+)+$", "", text).rstrip("-_.")
    return stem if stem != text and re.search(r"[A-Za-z]", stem) else "unknown"


# ---- scoring and results ---------------------------------------------------------------------------


def score_questions(task: str, questions: Sequence[Question], context: EvalContext) -> List[np.ndarray]:
    """Each question's candidates' mean log-probabilities, all candidates in one batched call."""
    flat = [item for q in questions for item in q.candidates]
    with _progress(context, len(flat), f"{task}: scoring", "seq") as bar:
        scores = mean_log_probs(context.scorer, flat, context.settings.max_tokens, on_batch=bar.update)
    bounds = np.cumsum([0] + [len(q.candidates) for q in questions])
    return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def is_right(scores: np.ndarray, label: int) -> bool:
    """The right candidate scores strictly higher than every other."""
    return bool(all(scores[label] > s for i, s in enumerate(scores) if i != label))


def _no_items(task: str, data_path: str, collected: Collected) -> ValueError:
    reasons = "; ".join(s.message for s in collected.skipped[:3])
    return ValueError(
        f"{task}: no item of {data_path} could be scored ({len(collected.skipped)} skipped"
        + (f", e.g. {reasons})" if reasons else ": the data is empty or --limit is 0)")
    )


def pair_result(task: str, collected: Collected, scores: List[np.ndarray], notes: List[str]) -> TaskResult:
    """Accuracy over all pairs and per group, one record per pair, from each question's candidates' scores."""
    records, rights, groups = [], [], {}
    for question, question_scores in zip(collected.questions, scores):
        right = is_right(question_scores, question.label)
        rights.append(right)
        records.append(
            {**question.record, "source": question.source, "scores": question_scores.tolist(), "right": right}
        )
        if question.group is not None:
            groups.setdefault(question.group, []).append(right)
    breakdown = {name: {"accuracy": float(np.mean(v)), "n": len(v)} for name, v in sorted(groups.items())}
    return TaskResult(
        task=task,
        metrics={"accuracy": float(np.mean(rights))},
        primary="accuracy",
        n=len(rights),
        items=records,
        skipped=collected.skipped,
        breakdown=breakdown,
        notes=notes,
    )


def _audio_notes(context: EvalContext) -> List[str]:
    codebooks = context.settings.codebooks
    which = "all codebooks" if codebooks is None else f"codebooks {list(codebooks)} only"
    return [
        "score: mean log-probability of the audio tokens after <|begin_of_text|><|audio_start|> "
        f"(markers excluded), {which}; {PAIR_RULE}"
    ]


def _text_notes(context: EvalContext, lowercase: bool = False) -> List[str]:
    notes = [
        "score: mean log-probability of the text tokens of <|begin_of_text|><|text_start|>T<|text_end|> "
        f"(markers excluded){', text lowercased (as SODA)' if lowercase else ''}; {PAIR_RULE}"
    ]
    if context.settings.codebooks is not None:
        notes.append(f"codebooks {list(context.settings.codebooks)} ignored: text items have no audio tokens")
    return notes


# ---- the tasks -------------------------------------------------------------------------------------

WUGGY_AUDIO = PairSchema("positive", "negative", "id", shown=("positive_word", "negative_word"))
WUGGY_TEXT = PairSchema("positive_word", "negative_word", "id")
BLIMP_AUDIO = PairSchema(
    "positive",
    "negative",
    "id",
    shown=("positive_transcription", "negative_transcription"),
    grouped_by=subtype_of,
    group_name="subtype",
    extra_columns=SUBTYPE_FIELDS,
)
BLIMP_TEXT = PairSchema(
    "positive_transcription",
    "negative_transcription",
    "id",
    grouped_by=subtype_of,
    group_name="subtype",
    extra_columns=SUBTYPE_FIELDS,
)
SALMON = PairSchema(
    "positive_audio",
    "negative_audio",
    "ind",
    grouped_by=lambda row: str(row.get("task") or "unknown"),
    group_name="task",
    extra_columns=("task",),
    config="all",
)


def _subtype_notes(result: TaskResult) -> TaskResult:
    if set(result.breakdown) == {"unknown"}:
        result.breakdown = {}
        result.notes.append(
            "no per-subtype accuracy: the data has no subtype column (" + ", ".join(SUBTYPE_FIELDS) + ") and its "
            "ids end in no number to strip"
        )
    else:
        result.notes.append(
            f"subtype: the first of the columns {', '.join(SUBTYPE_FIELDS)}, else the id less its number"
        )
    return result


@dataclass(frozen=True)
class LikelihoodTask:
    """A likelihood benchmark in two halves, so scoring can happen elsewhere (at a training layout):
    ``collect`` reads the data into questions (scoring items per candidate), ``finish`` turns each
    question's candidate scores into the result."""

    name: str
    dataset: str
    description: str
    collect: Callable[[str, EvalContext], Collected]
    finish: Callable[[Collected, List[np.ndarray], EvalContext], TaskResult]

    def gather(self, data_path: str, context: EvalContext) -> Collected:
        collected = self.collect(data_path, context)
        if not collected.questions:
            raise _no_items(self.name, data_path, collected)
        return collected

    def run(self, data_path: str, context: EvalContext) -> TaskResult:
        collected = self.gather(data_path, context)
        return self.finish(collected, score_questions(self.name, collected.questions, context), context)


def _pairs(task: str, schema: PairSchema, audio: bool = True, lowercase: bool = False):
    def collect(data_path: str, context: EvalContext) -> Collected:
        cells = AudioCells(task, data_path, context) if audio else TextCells(context, lowercase=lowercase)
        return collect_pairs(task, data_path, context, cells, schema)

    return collect


def _pair_finish(task: str, audio: bool = True, lowercase: bool = False, extra_notes=(), subtypes: bool = False):
    def finish(collected: Collected, scores: List[np.ndarray], context: EvalContext) -> TaskResult:
        notes = (_audio_notes(context) if audio else _text_notes(context, lowercase)) + list(extra_notes)
        result = pair_result(task, collected, scores, notes)
        return _subtype_notes(result) if subtypes else result

    return finish


# ---- HellaSwag -------------------------------------------------------------------------------------

HELLASWAG_COLUMNS = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label")


def hellaswag_preprocess(text: str) -> str:
    """lm-evaluation-harness's ``hellaswag/utils.py`` cleaning: WikiHow's ``[title]`` becomes a full stop,
    other bracketed tags go, double spaces collapse."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_request(row: dict, source: str) -> Tuple[str, List[str], int]:
    """``(context, endings, label)`` as the harness builds them: ``activity_label: ctx_a ctx_b`` with
    ``ctx_b`` capitalised (``ctx`` where the row has no ``ctx_a``/``ctx_b``), all cleaned."""
    if isinstance(row.get("ctx_a"), str) and isinstance(row.get("ctx_b"), str):
        ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    elif isinstance(row.get("ctx"), str):
        ctx = row["ctx"]
    else:
        raise _Skip("missing_field", f"{source}: no ctx_a/ctx_b or ctx")
    activity = row.get("activity_label")
    query = hellaswag_preprocess(f"{activity}: {ctx}" if isinstance(activity, str) and activity else ctx)
    endings = row.get("endings")
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
        raise _Skip("bad_field", f"{source}: endings must be a list of texts, got {endings!r}")
    label = row.get("label")
    try:
        label = int(label)
    except (TypeError, ValueError):
        raise _Skip("missing_field", f"{source}: label {label!r} is not an ending's index") from None
    if not 0 <= label < len(endings):
        raise _Skip("bad_field", f"{source}: label {label} is outside the {len(endings)} endings")
    choices = [hellaswag_preprocess(e) for e in endings]
    if not query.strip() or not all(choices):
        raise _Skip("empty_text", f"{source}: empty context or ending")
    return query, choices, label


def continuation_item(context_text: str, continuation: str, tokenizer) -> ScoringItem:
    """BOS + context + continuation as plain text (SODA's text-only documents), the continuation's tokens
    scored. Split as the harness's ``_encode_pair``: the context's trailing spaces move to the
    continuation, the whole is encoded once, and its tokens past the context's own encoding are the
    continuation's (a merge across the boundary counts as the continuation's)."""
    spaces = len(context_text) - len(context_text.rstrip())
    if spaces:
        context_text, continuation = context_text[:-spaces], context_text[-spaces:] + continuation
    whole = tokenizer.encode_text(context_text + continuation)
    start = len(tokenizer.encode_text(context_text))
    if len(whole) <= start:
        raise _Skip("empty_text", f"the continuation {continuation!r} adds no token")
    ids = render(Document([Segment(Kind.PLAIN, whole)], bos=True, eos=False), tokenizer.layout).ids
    return ScoringItem(ids, np.arange(1 + start, 1 + len(whole)))


def collect_hellaswag(data_path: str, context: EvalContext) -> Collected:
    collected = Collected()
    for source, row in _rows("hellaswag", data_path, context, list(HELLASWAG_COLUMNS), split="validation"):
        if isinstance(row, Skipped):
            collected.skipped.append(row)
            continue
        try:
            query, choices, label = hellaswag_request(row, source)
            items = [continuation_item(query, " " + choice, context.tokenizer) for choice in choices]
        except _Skip as skip:
            message = str(skip) if str(skip).startswith(source) else f"{source}: {skip}"
            collected.skipped.append(Skipped(source, skip.reason, message))
            continue
        record = {"id": row.get("ind"), "context": query, "endings": choices, "label": label}
        collected.questions.append(Question(source, record, items, label))
    return collected


def finish_hellaswag(collected: Collected, scores: List[np.ndarray], context: EvalContext) -> TaskResult:
    records, right, right_norm = [], [], []
    for question, means in zip(collected.questions, scores):
        length = np.array([len(c) for c in question.record["endings"]], dtype=np.float64)
        sums = means * np.array([len(item.targets) for item in question.candidates])
        normed = sums / length
        right.append(is_right(sums, question.label))
        right_norm.append(is_right(normed, question.label))
        records.append(
            {
                **question.record,
                "source": question.source,
                "scores": sums.tolist(),
                "scores_norm": normed.tolist(),
                "right": right[-1],
                "right_norm": right_norm[-1],
            }
        )
    notes = [
        "accuracy: the ending with the highest sum of token log-probabilities (lm-evaluation-harness's acc); "
        "accuracy_norm: that sum divided by the ending's length in characters (its acc_norm)",
        "SODA's HellaSwag number: lm-evaluation-harness's convention (acc_norm); SODA's paper does not state it",
        "zero-shot, lm-evaluation-harness's prompt: 'activity_label: ctx_a Ctx_b' cleaned of WikiHow's brackets, "
        "the ending after a space; after <|begin_of_text|> as plain text (no text markers, as SODA's text-only "
        "data); the right ending must score strictly higher than the others (the harness's argmax takes the "
        "first of a tie)",
    ]
    if context.settings.codebooks is not None:
        notes.append(f"codebooks {list(context.settings.codebooks)} ignored: text items have no audio tokens")
    return TaskResult(
        task="hellaswag",
        metrics={"accuracy": float(np.mean(right)), "accuracy_norm": float(np.mean(right_norm))},
        primary="accuracy_norm",
        n=len(records),
        items=records,
        skipped=collected.skipped,
        notes=notes,
    )


# ---- registry --------------------------------------------------------------------------------------

LIKELIHOOD_TASKS = {
    task.name: task
    for task in (
        LikelihoodTask(
            "swuggy",
            "swuggy",
            "spoken words vs non-words (sWUGGY), audio log-likelihood",
            _pairs("swuggy", WUGGY_AUDIO),
            _pair_finish("swuggy"),
        ),
        LikelihoodTask(
            "sblimp",
            "sblimp",
            "spoken grammatical vs ungrammatical sentences (sBLIMP), audio log-likelihood",
            _pairs("sblimp", BLIMP_AUDIO),
            _pair_finish("sblimp", subtypes=True),
        ),
        LikelihoodTask(
            "salmon",
            "salmon",
            "acoustic consistency and alignment (SALMon), audio log-likelihood",
            _pairs("salmon", SALMON),
            _pair_finish("salmon", extra_notes=["accuracy: over all pairs of the data (the `all` config: every task)"]),
        ),
        LikelihoodTask(
            "twuggy",
            "swuggy",
            "sWUGGY's words vs non-words as text",
            _pairs("twuggy", WUGGY_TEXT, audio=False),
            _pair_finish("twuggy", audio=False),
        ),
        LikelihoodTask(
            "tblimp",
            "sblimp",
            "sBLIMP's sentence pairs as lowercased text",
            _pairs("tblimp", BLIMP_TEXT, audio=False, lowercase=True),
            _pair_finish("tblimp", audio=False, lowercase=True, subtypes=True),
        ),
        LikelihoodTask(
            "hellaswag",
            "hellaswag",
            "HellaSwag sentence completion (acc_norm), text log-likelihood",
            collect_hellaswag,
            finish_hellaswag,
        ),
    )
}
"""The likelihood benchmarks by name; each also registered for ``tools/evaluate.py``."""

for _task in LIKELIHOOD_TASKS.values():
    register(TaskSpec(_task.name, "likelihood", _task.dataset, _task.description, _task.run))
