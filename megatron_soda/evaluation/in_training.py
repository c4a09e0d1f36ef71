"""Likelihood benchmarks during training, at the training layout.

Reading the benchmarks' audio and encoding it through the codec is not a training job's business: a
one-off ``tools/evaluate.py --prepare FILE`` reads the data, encodes it and writes the questions (every
candidate's token ids and scored positions, labels, groups) to FILE, with the vocabulary it was made
for. A run given ``--eval-tasks-data FILE`` loads that file on every rank, scores every candidate with
``parallel_mean_log_probs`` (forward only, TP/PP/DP) every ``--eval-tasks-interval`` iterations, and
logs each task's headline metric (``eval swuggy accuracy``, ...) to the console, tensorboard and the
metrics file: the numbers ``tools/evaluate.py`` gives for the same checkpoint.

The file is a pickle: load only files you made.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from megatron_soda.evaluation.base import EvalContext, EvalSettings

logger = logging.getLogger(__name__)

PREPARED_VERSION = 1


def write_prepared(path, collected: Dict[str, object], layout, settings: EvalSettings, inputs: Dict[str, str]) -> None:
    """The questions of each task (``likelihood_tasks.Collected``) and what they were made with."""
    payload = {
        "version": PREPARED_VERSION,
        "layout": dataclasses.asdict(layout),
        "codebooks": settings.codebooks,
        "inputs": inputs,
        "tasks": collected,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


def read_prepared(path, layout, tasks: Optional[Sequence[str]] = None) -> dict:
    """A prepared file, checked against this run's vocabulary; ``tasks`` narrows it (each must be in it)."""
    try:
        with open(path, "rb") as f:
            payload = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError) as error:
        raise ValueError(f"--eval-tasks-data {path}: not a readable prepared evaluation ({error})") from None
    if not isinstance(payload, dict) or payload.get("version") != PREPARED_VERSION:
        raise ValueError(f"--eval-tasks-data {path}: not a prepared evaluation of version {PREPARED_VERSION}")
    if payload["layout"] != dataclasses.asdict(layout):
        raise ValueError(
            f"--eval-tasks-data {path} was prepared for the vocabulary {payload['layout']}, this run's "
            f"tokenizer has {dataclasses.asdict(layout)}: prepare it with this run's --tokenizer"
        )
    if tasks:
        missing = [t for t in tasks if t not in payload["tasks"]]
        if missing:
            raise ValueError(
                f"--eval-tasks {' '.join(missing)}: not in --eval-tasks-data {path} (it holds "
                f"{', '.join(payload['tasks'])})"
            )
        payload["tasks"] = {t: payload["tasks"][t] for t in tasks}
    return payload


class TrainingEvaluator:
    """Scores a prepared file's tasks on the model chunks of a run (collective: every rank calls it)."""

    def __init__(self, path, layout, *, tasks=None, seq_length: int, micro_batch_size: int, vocab_size: int):
        payload = read_prepared(path, layout, tasks)
        self.tasks = payload["tasks"]
        self.settings = EvalSettings(codebooks=payload["codebooks"], progress=False)
        self.layout, self.seq_length, self.micro_batch_size = layout, seq_length, micro_batch_size
        self.vocab_size = vocab_size
        for name, collected in self.tasks.items():
            kept = [q for q in collected.questions if all(len(c.ids) <= seq_length for c in q.candidates)]
            if len(kept) < len(collected.questions):
                logger.warning(
                    "eval %s: %d of %d items are longer than --seq-length %d and are left out",
                    name,
                    len(collected.questions) - len(kept),
                    len(collected.questions),
                    seq_length,
                )
            if not kept:
                raise ValueError(f"--eval-tasks {name}: no item fits --seq-length {seq_length}")
            collected.questions = kept

    def evaluate(self, model_chunks: List) -> Dict[str, float]:
        """``{"eval <task> <metric>": value}`` for each task's headline metric."""
        from megatron_soda.evaluation.likelihood_tasks import LIKELIHOOD_TASKS
        from megatron_soda.evaluation.parallel_scoring import parallel_mean_log_probs

        items = [c for collected in self.tasks.values() for q in collected.questions for c in q.candidates]
        scores = parallel_mean_log_probs(
            model_chunks,
            items,
            seq_length=self.seq_length,
            micro_batch_size=self.micro_batch_size,
            vocab_size=self.vocab_size,
            pad_id=self.layout.eos_id,
        )
        out, start = {}, 0
        context = EvalContext(tokenizer=None, settings=self.settings)
        for name, collected in self.tasks.items():
            per_question = []
            for question in collected.questions:
                per_question.append(np.asarray(scores[start : start + len(question.candidates)]))
                start += len(question.candidates)
            result = LIKELIHOOD_TASKS[name].finish(collected, per_question, context)
            out[f"eval {name} {result.primary}"] = result.metrics[result.primary]
        return out
