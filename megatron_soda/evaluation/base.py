"""What every evaluation task shares: the context it runs in, what it returns, and the registry that
``tools/evaluate.py`` reads.

A task reads its public data from a local path (nothing downloads), turns items into scoring items or
generation requests, and returns a ``TaskResult``: its metrics (one of them the headline), a breakdown
(SALMon's per-task accuracy, sBLIMP's per-subtype), one record per item for the side file, and the
items it skipped with the reason (a malformed record is reported by name, never fatal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional


@dataclass
class EvalSettings:
    """Knobs shared by tasks (the tool's flags)."""

    codebooks: Optional[List[int]] = None
    """score only these codebooks' audio tokens (e.g. [0], the semantic one); default all."""
    max_tokens: int = 4096
    """padded tokens per scoring batch."""
    limit: Optional[int] = None
    """items per task at most (the first ones), for a quick look."""
    progress: bool = True
    seed: int = 1234


@dataclass
class EvalContext:
    """The model and tools a task may use; a scorer for likelihood tasks, a generator for generation tasks."""

    tokenizer: Any
    settings: EvalSettings
    scorer: Any = None
    """``scoring.Scorer`` (MegatronScorer or HFScorer)."""
    generator: Any = None
    """``inference.engine.MegatronGenerator`` or ``inference.hf_engine.HFGenerator``."""
    audio: Any = None
    """``evaluation.audio.AudioEncoder``: waveforms -> codec codes, cached by the codec's identity."""
    codec: Any = None
    """the codec itself (decoding generated speech)."""
    options: Dict[str, Any] = field(default_factory=dict)
    """task-specific paths (e.g. ``asr_model`` for TTS WER, ``speaker_model`` for speaker similarity)."""

    @property
    def layout(self):
        return self.tokenizer.layout


@dataclass
class Skipped:
    source: str
    """the item: ``file:row`` or its id."""
    reason: str
    message: str


@dataclass
class TaskResult:
    task: str
    metrics: Dict[str, float]
    """e.g. {"accuracy": 0.62} or {"accuracy": .., "accuracy_norm": ..} or {"wer": ..}."""
    primary: str
    """the headline metric's name."""
    n: int
    """items scored."""
    items: List[dict] = field(default_factory=list)
    """one record per item (scores, texts), written to the side file."""
    skipped: List[Skipped] = field(default_factory=list)
    breakdown: Dict[str, Dict[str, float]] = field(default_factory=dict)
    """per-group metrics, e.g. {"sentiment_consistency": {"accuracy": .7, "n": 200}}."""
    notes: List[str] = field(default_factory=list)
    """what a reader must know to compare the number (normalisation, which metric SODA reports, ...)."""
    info: Dict[str, str] = field(default_factory=dict)
    """the same kind of fact as a value a program reads, e.g. {"bleu_signature": sacrebleu's signature}."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    """``likelihood`` (needs a scorer) or ``generation`` (needs a generator and a codec)."""
    dataset: str
    """the key of its data in ``--input KEY=PATH`` (tWUGGY reads sWUGGY's data: key ``swuggy``)."""
    description: str
    run: Callable[[str, EvalContext], TaskResult]
    """``run(data_path, context)``."""


REGISTRY: Dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"evaluation task {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec
