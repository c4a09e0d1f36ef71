"""Fine-tuning examples -> token datasets with per-token loss flags, in resumable shards.

Each example (``sft_records``: generic text/audio segments, or CVSS-style S2ST) becomes one document,
``<|begin_of_text|>`` ... ``<|end_of_text|>``, whose tokens carry their segment's loss flag (``formats.render``;
end-of-text takes the last segment's). An example longer than ``--seq-length`` is rejected, not cut: the
packer would cut it and leave a response without its prompt.

Output directory (the audio pipeline's layout, ``jobs.ShardedJob``)::

    job.json                    what this job is (config, records, codec) and how many workers share it
    tokens.*                    every shard's tokens and loss flags merged, written by finalizing
    rejects_input.jsonl         example lines refused before any audio was read (bad JSON, missing field,
                                unknown language, ...)
    shards/tokens_NNNNN.*       one sequence per kept example, with tokens_NNNNN.vocab.json (the tokenizer and
                                vocabulary layout) and tokens_NNNNN.loss.bin/.idx (its 0/1 loss flags)
    shards/meta_NNNNN.jsonl     one line per kept example: id, source (file:line), tokens, trained tokens, seconds
    shards/rejects_NNNNN.jsonl  examples refused while reading audio or rendering, with their reasons
    shards/shard_NNNNN.json     counts, audio digest, codec device and dtype; written last, the commit point
    timing/shard_NNNNN.json     wall seconds per shard on its device
    report.json                 totals over all shards, written once every shard is committed

Workers share a job as preprocess_audio's do (``--num-workers-total``/``--worker-rank``, ``--finalize``).
Train on it as on preprocess_audio's output: ``--data-path <output-dir>/tokens`` (the merged shards; the
flags come along). Packed (``tools/pack_dataset.py
--seq-length N``, trained with ``--packed-data``), each example stays whole in one row.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import numpy as np

from megatron_soda.checks import check_at_least, check_file
from megatron_soda.codec.config import CodecConfig
from megatron_soda.data.audio_decode import Decoded, DecodeTask
from megatron_soda.data.codec_job import (
    check_codec_job,
    encode_decoded,
    job_fingerprint,
    load_codec_and_tokenizer,
    run_shards,
    shard_ranges,
)
from megatron_soda.data.formats import render
from megatron_soda.data.indexed_dataset import DatasetWriter, vocab_record
from megatron_soda.data.jobs import WorkerConfig, finish, jsonl, open_job, write_atomic
from megatron_soda.data.manifest import Reject, read_records, rejects_jsonl
from megatron_soda.data.s2st_format import Variant
from megatron_soda.data.sft_records import CVSS_LANGUAGES, parse_generic, s2st_parser
from megatron_soda.flags import flag

logger = logging.getLogger(__name__)


@dataclass
class SFTPreprocessConfig:
    """What ``tools/preprocess_sft.py`` runs; its fields are the tool's flags."""

    inputs: List[str] = field(metadata=flag("--input", nargs="+"))
    """JSONL files of fine-tuning examples, one per line (see --format); audio paths are relative to each file."""
    output_dir: str
    """job directory (job.json, shards, rejects, report); a rerun of the same command resumes it."""
    tokenizer: str
    """SODA tokenizer directory (tools/build_tokenizer.py)."""
    seq_length: int
    """the training sequence length: a longer example is rejected (the packer would cut it and orphan its
    response)."""
    format: str = field(default="generic", metadata=flag(choices=("generic", "s2st")))
    """generic: {"id", "segments": [{"text" or "audio", "loss"}, ...]}; s2st: CVSS-style records (source_audio,
    source_language, source_text, target_text, target_audio, target_language)."""
    variant: Optional[str] = field(default=None, metadata=flag(choices=tuple(v.value for v in Variant)))
    """--format s2st only: lm trains every token; sft (default) the response only (target text, target audio,
    end-of-text). Generic examples carry their own flags."""
    languages: Optional[List[str]] = field(default=None, metadata=flag(nargs="+"))
    """--format s2st only: the language codes records may use (default: CVSS's 21 source languages and en)."""
    codec: CodecConfig = field(default_factory=CodecConfig)
    cluster: WorkerConfig = field(default_factory=WorkerConfig)
    documents_per_shard: int = 1000
    """examples per output shard (the unit of resume)."""
    workers: int = 2
    """processes that read and resample audio; 0 does it in this process."""
    min_seconds: float = 0.1
    """reject examples with a shorter audio clip."""
    max_seconds: float = 600.0
    """reject examples with a longer audio clip (absurd durations)."""
    encode_batch_seconds: float = field(default=600.0, metadata=flag(hidden=True))
    """Audio handed to the codec per call (the codec batches further by length)."""
    overwrite: bool = False
    """discard an existing job in --output-dir and start again."""
    progress: bool = True
    """show a progress bar."""

    def check(self) -> None:
        """Refuses settings that cannot work, naming the flag; reads no example and loads nothing."""
        for path in self.inputs:
            check_file("--input", path, " (give JSONL files of examples)")
        check_at_least("--seq-length", self.seq_length, 1)
        if self.format != "s2st":
            for name, value in (("--variant", self.variant), ("--languages", self.languages)):
                if value is not None:
                    raise ValueError(f"{name} applies to --format s2st; generic examples carry their own loss flags")
        for code in self.languages or ():
            if not code or any(c in code for c in "<> "):
                raise ValueError(f"--languages: {code!r} is not a language code (no spaces or tag characters)")
        check_codec_job(self)

    def language_codes(self) -> List[str]:
        return list(self.languages or CVSS_LANGUAGES)


def read_examples(config: SFTPreprocessConfig):
    """Records and input rejects of every input, in order."""
    if config.format == "s2st":
        parse = s2st_parser(config.language_codes(), Variant(config.variant or Variant.SFT))
    else:
        parse = parse_generic
    records, rejects = [], []
    for path in config.inputs:
        kept, refused = read_records(path, parse)
        records += kept
        rejects += refused
    return records, rejects


def _fingerprint(config: SFTPreprocessConfig, records, codec) -> dict:
    """``codec_job.job_fingerprint`` over each record's fields (its audio files' sizes and times are its
    shard's)."""
    rows = (asdict(r) for r in records)
    return job_fingerprint(config, rows, codec)


def _process_shard(job, index, records, codec, tokenizer, pool, config, progress, vocab) -> dict:
    """Encodes, renders, checks and writes shard ``index`` (kept examples with their flags, rejects with
    reasons); returns its counts, for its commit."""
    tasks = [
        DecodeTask(clip.path, clip.start, clip.end, codec.sample_rate, config.min_seconds, config.max_seconds)
        for record in records
        for clip in record.clips()
    ]
    encoded = iter(encode_decoded(pool.map(tasks), codec, config.encode_batch_seconds, progress))
    layout = tokenizer.layout
    kept, rejects, meta = [], [], []
    for record in records:
        codes = [next(encoded) for _ in record.clips()]
        failed = next((c for c in codes if isinstance(c, Decoded)), None)
        if failed is not None:
            rejects.append(Reject(record.source, failed.reason, f"{record.source}: {failed.message}", record.id))
            continue
        try:
            rendered = render(record.document(codes, tokenizer), layout)
        except Exception as error:  # the tokenizer's own refusal of odd text
            rejects.append(Reject(record.source, "bad_text", f"{record.source}: {error}", record.id))
            continue
        if len(rendered.ids) > config.seq_length:
            message = (
                f"{record.source}: {len(rendered.ids)} tokens, more than --seq-length {config.seq_length} (packing "
                "would cut the example and orphan its response; shorten it or raise --seq-length)"
            )
            rejects.append(Reject(record.source, "over_seq_length", message, record.id))
            continue
        kept.append(rendered)
        meta.append(
            {
                "id": record.id,
                "source": record.source,
                "tokens": len(rendered.ids),
                "trained_tokens": int(rendered.loss_mask.sum()),
                "seconds": sum(c.shape[1] for c in codes) / codec.frame_rate,
            }
        )

    lengths = [len(r.ids) for r in kept]
    tokens = np.concatenate([r.ids for r in kept]) if kept else np.zeros(0, np.int64)
    flags = np.concatenate([r.loss_mask for r in kept]) if kept else np.zeros(0, bool)
    prefix = job.path("tokens", index)
    with DatasetWriter(prefix, layout.vocab_size, overwrite=True, vocab=vocab, loss_mask=True) as writer:
        writer.add_documents(tokens, lengths, loss_mask=flags)
    write_atomic(job.path("meta", index, ".jsonl"), jsonl(meta))
    write_atomic(job.path("rejects", index, ".jsonl"), rejects_jsonl(rejects))
    return {
        "examples": len(kept),
        "tokens": int(sum(lengths)),
        "trained_tokens": int(flags.sum()),
        "seconds": sum(m["seconds"] for m in meta),
        "rejects": dict(Counter(r.reason for r in rejects)),
    }


def preprocess_sft(config: SFTPreprocessConfig) -> dict:
    """Runs (or resumes) this worker's share of a fine-tuning preprocessing job; returns the job's report
    once every shard is committed, else this worker's part (``finalized`` false)."""
    check_at_least("documents_per_shard", config.documents_per_shard, 1)
    tokenizer, codec = load_codec_and_tokenizer(config)
    records, input_rejects = read_examples(config)
    job = open_job(config, _fingerprint(config, records, codec))
    shards = shard_ranges(len(records), config.documents_per_shard)
    vocab = vocab_record(tokenizer.layout, config.tokenizer)
    logger.info("%d examples, %d shards, %d input rejects", len(records), len(shards), len(input_rejects))

    def process(i, pool, progress):
        return _process_shard(job, i, [records[k] for k in shards[i]], codec, tokenizer, pool, config, progress, vocab)

    def audio_of(i):
        return [clip.path for k in shards[i] for clip in records[k].clips()]

    run_shards(job, config, codec, len(shards), audio_of, process, unit="clip")
    return finish(job, len(shards), ("tokens",), input_rejects, config.cluster.finalize)
