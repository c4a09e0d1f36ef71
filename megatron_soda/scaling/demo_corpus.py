"""The shipped demo corpus (data/demo_corpus) made trainable, step by step: a SODA tokenizer from its text, the
speech through Mimi with random weights at SODA's settings, the text documents, each job's shards merged into
one dataset. tools/demo.py runs the steps between its printed sections; ``prepare_demo_data`` runs them all
(the IsoFLOP demo). No codec weights can be downloaded here, so the tokens mean nothing; the pipeline is real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

CORPUS = Path(__file__).resolve().parents[2] / "data" / "demo_corpus"
BPE_VOCAB_SIZE = 1024
"""Text ids of the demo tokenizer (the SODA layout adds its specials and 16,384 audio ids)."""


def build_tokenizer(corpus: Path, out: Path) -> Path:
    """A BPE trained on the corpus's text (documents and transcripts) + SODA's layout, saved to out/tokenizer."""
    from megatron_soda.tokenizer import build_soda_tokenizer, save_soda_tokenizer, train_bpe

    texts = [json.loads(line)["text"] for name in ("text.jsonl", "manifest.jsonl") for line in open(corpus / name)]
    save_soda_tokenizer(build_soda_tokenizer(train_bpe(texts, vocab_size=BPE_VOCAB_SIZE)), out / "tokenizer")
    return out / "tokenizer"


def preprocess_speech(corpus: Path, out: Path, workers: int, progress: bool = True) -> Dict[str, Any]:
    """manifest.jsonl through random-weight Mimi into out/speech_job; returns the job's summary."""
    from megatron_soda.codec import CodecConfig
    from megatron_soda.data.audio_pipeline import AudioPreprocessConfig, preprocess_audio

    return preprocess_audio(
        AudioPreprocessConfig(
            inputs=[str(corpus / "manifest.jsonl")],
            output_dir=str(out / "speech_job"),
            tokenizer=str(out / "tokenizer"),
            codec=CodecConfig(name="mimi", random_init=True),
            documents_per_shard=10,
            workers=workers,
            progress=progress,
        )
    )


def preprocess_text_documents(corpus: Path, out: Path) -> Dict[str, Any]:
    """text.jsonl into out/text_job; returns the job's summary."""
    from megatron_soda.data.text_pipeline import TextPreprocessConfig, preprocess_text

    return preprocess_text(
        TextPreprocessConfig(
            inputs=[str(corpus / "text.jsonl")],
            output_dir=str(out / "text_job"),
            tokenizer=str(out / "tokenizer"),
            progress=False,
        )
    )


def merge_jobs(out: Path, jobs: Dict[str, Dict[str, Any]]) -> None:
    """Each job's shards (out/<name>_job) merged into the dataset out/<name>."""
    from megatron_soda.data.indexed_dataset import merge_datasets

    for name, job in jobs.items():
        shards = [out / f"{name}_job" / "shards" / f"tokens_{i:05d}" for i in range(job["shards"])]
        merge_datasets(out / name, shards, progress=False)


def prepare_demo_data(corpus: Path, out: Path, workers: int) -> Dict[str, Any]:
    """Every step, quietly, into ``out``; kept when already made (out/done.json). Returns the tokenizer and the
    0.95 / 0.05 speech / text --data-path."""
    done = out / "done.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    build_tokenizer(corpus, out)
    merge_jobs(
        out,
        {
            "speech": preprocess_speech(corpus, out, workers, progress=False),
            "text": preprocess_text_documents(corpus, out),
        },
    )
    made = {
        "tokenizer": str(out / "tokenizer"),
        "data_path": ["0.95", str(out / "speech"), "0.05", str(out / "text")],
    }
    done.write_text(json.dumps(made), encoding="utf-8")
    return made
