"""BLEU as sacrebleu computes it: corpus BLEU with its defaults (13a tokenizer, case-sensitive, exponential
smoothing, one reference per item), reported with sacrebleu's signature so that a number says how it was
made. Per-item scores (for the side file) are sacrebleu's sentence BLEU, with effective order as its
``sentence_bleu`` has it; only the corpus score is a benchmark number."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence


@dataclass(frozen=True)
class CorpusBleu:
    score: float
    """0-100."""
    signature: str
    """sacrebleu's, e.g. ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``."""
    precisions: List[float]
    """the 1- to 4-gram precisions (percent)."""
    brevity_penalty: float
    hypothesis_length: int
    reference_length: int


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> CorpusBleu:
    """sacrebleu's corpus BLEU of ``hypotheses`` against one reference each."""
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        raise ValueError("no sentences to compute a BLEU over")
    metric = BLEU()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return CorpusBleu(
        score=float(result.score),
        signature=str(metric.get_signature()),
        precisions=[float(p) for p in result.precisions],
        brevity_penalty=float(result.bp),
        hypothesis_length=int(result.sys_len),
        reference_length=int(result.ref_len),
    )


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (effective order: a short sentence is not zeroed by its missing 4-grams)."""
    from sacrebleu.metrics import BLEU

    return float(BLEU(effective_order=True).sentence_score(hypothesis, [reference]).score)
