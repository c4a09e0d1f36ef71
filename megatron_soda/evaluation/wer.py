"""Word error rate as SODA reports it: both texts normalised the way SODA's public evaluation code does,
aligned by jiwer, and pooled over the corpus.

SODA's normalisation removes ``. , ! ? ; : " ' - ( ) [ ] { }`` and the typographic quotes ``’ ‘ “ ”``,
collapses whitespace and lowercases. Everything else stays: "well-known" becomes "wellknown", "don't"
"dont", and digits are not spelled out, so a number is only comparable to one computed the same way
(Seed-TTS-eval's own script keeps apostrophes and removes all ASCII punctuation, for instance).

The corpus WER is the total of substitutions, deletions and insertions over the total of reference
words (what LibriSpeech numbers mean); the mean of per-utterance WERs is reported beside it.
"""

from __future__ import annotations

from typing import Dict, Iterable, Tuple

SODA_PUNCTUATION = ".,!?;:\"'-()[]{}’‘“”"
_REMOVE = str.maketrans("", "", SODA_PUNCTUATION)


def normalize(text: str) -> str:
    """SODA's normalisation: the punctuation above removed, whitespace collapsed, lowercased."""
    return " ".join(text.translate(_REMOVE).split()).lower()


def word_errors(reference: str, hypothesis: str) -> Dict[str, int]:
    """The alignment counts of ``hypothesis`` against ``reference``, both normalised first.

    An empty hypothesis is all deletions; a reference that normalises to nothing has no words to
    count errors against and is a ValueError (callers skip such items).
    """
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        raise ValueError(f"the reference {reference!r} has no words after normalisation")
    out = jiwer.process_words(ref, hyp)
    return {
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "hits": out.hits,
        "reference_words": out.substitutions + out.deletions + out.hits,
    }


def errors_of(counts: Dict[str, int]) -> int:
    """Substitutions + deletions + insertions."""
    return counts["substitutions"] + counts["deletions"] + counts["insertions"]


def pooled_wer(counts: Iterable[Dict[str, int]]) -> Dict[str, float]:
    """``corpus_wer`` from ``word_errors`` results already computed (a task keeps them per item)."""
    counts = list(counts)
    if not counts:
        raise ValueError("no utterances to compute a WER over")
    errors = sum(errors_of(c) for c in counts)
    words = sum(c["reference_words"] for c in counts)
    return {
        "wer": errors / words,
        "mean_utterance_wer": sum(errors_of(c) / c["reference_words"] for c in counts) / len(counts),
        "errors": errors,
        "words": words,
        "n": len(counts),
    }


def corpus_wer(pairs: Iterable[Tuple[str, str]]) -> Dict[str, float]:
    """``{wer, mean_utterance_wer, errors, words, n}`` over ``(reference, hypothesis)`` pairs: the corpus
    WER pools errors and words, the mean weighs every utterance alike."""
    return pooled_wer(word_errors(reference, hypothesis) for reference, hypothesis in pairs)
