#!/usr/bin/env python3
"""End-to-end demo of what megatron-soda runs today, on the shipped speech corpus, on CPU, offline.

    python tools/demo.py [--output-dir demo_out]

1. builds a SODA tokenizer (a small BPE trained on the corpus text + 4 specials + 16,384 audio tokens);
2. preprocesses the demo corpus (data/demo_corpus: 100 utterances in 25 recordings) through Mimi at
   SODA's settings (8 codebooks, 12.5 Hz) into interleaved sequences in both orders, and the text
   documents into text-only sequences. No codec weights can be downloaded here, so the codec has
   RANDOM weights: the shapes, ids and pipeline are real, the tokens mean nothing;
3. merges shards, validates them, packs speech into 4096-token rows that keep document boundaries;
4. samples a 0.95/0.05 speech/text blend with megatron-core's GPTDataset;
5. detokenizes one sequence back to its transcript and wav clips;
6. pretrains a tiny Qwen3 model on the blend with megatron-core (one CPU process) and saves a checkpoint;
7. exports the checkpoint to a Hugging Face Qwen3ForCausalLM directory;
8. generates: speech from a transcript with our checkpoint (TTS, decoded to a wav by the codec) and a
   transcript of an utterance through the export (ASR, transformers' generate). The model is tiny and
   barely trained: the speech is noise and the transcript is not the utterance's;
9. evaluates it with SODA's benchmark code: sWUGGY- and tWUGGY-style pairs made from the corpus (an
   utterance against itself reversed; a transcript against its words reversed) and ASR WER.
"""

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megatron_soda.checks import check_at_least, check_file, check_output_dir
from megatron_soda.codec import CodecConfig
from megatron_soda.data.indexed_dataset import validate_dataset
from megatron_soda.data.packing import pack_dataset
from megatron_soda.flags import FlagParser, flag
from megatron_soda.logs import hide_known_notices
from megatron_soda.scaling import demo_corpus

CORPUS = demo_corpus.CORPUS


def step(title: str) -> None:
    print(f"\n== {title}")


@dataclass
class DemoConfig:
    output_dir: str = "demo_out"
    """where to write (replaced)."""
    corpus: str = field(default=str(CORPUS), metadata=flag("--input"))
    """the corpus: a directory holding manifest.jsonl and text.jsonl."""
    seq_length: int = 4096
    """packed row / sample length."""
    workers: int = 2
    """audio decoding processes."""
    train_iters: int = 30
    """pretraining iterations of the tiny model."""

    def check(self) -> None:
        check_output_dir("--output-dir", self.output_dir)
        for name in ("manifest.jsonl", "text.jsonl"):
            check_file("--input", os.path.join(self.corpus, name))
        check_at_least("--seq-length", self.seq_length, 2)
        check_at_least("--workers", self.workers, 0)
        check_at_least("--train-iters", self.train_iters, 1)


def build_parser() -> FlagParser:
    return FlagParser(DemoConfig, prog=os.path.basename(__file__), description=__doc__, check=DemoConfig.check)


def main(argv=None) -> int:
    args = build_parser().parse(argv)
    corpus = Path(args.corpus)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    hide_known_notices()
    logging.getLogger("megatron.core").setLevel(logging.ERROR)  # its in-memory index notices

    from megatron_soda.tokenizer import load_soda_tokenizer

    start = time.time()
    out = Path(args.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    step("1. tokenizer")
    tokenizer = load_soda_tokenizer(demo_corpus.build_tokenizer(corpus, out))
    layout = tokenizer.layout
    print(
        f"{layout.vocab_size} ids: text < {layout.base_size}, <|text_start|> {layout.text_start_id}, "
        f"audio {layout.audio_offset}..{layout.vocab_size - 1}"
    )

    step("2. preprocess speech (Mimi, random weights) and text")
    speech = demo_corpus.preprocess_speech(corpus, out, args.workers)
    print(
        f"speech: {speech['utterances']} utterances, {speech['hours'] * 3600:.0f} s, {speech['documents']} documents "
        f"-> {speech['sequences']} sequences (both orders), {speech['tokens']} tokens; rejects {speech['rejects']}"
    )
    text = demo_corpus.preprocess_text_documents(corpus, out)
    print(f"text:   {text['documents']} documents, {text['tokens']} tokens")

    step("3. merge, validate, pack")
    demo_corpus.merge_jobs(out, {"speech": speech, "text": text})
    for name in ("speech", "text"):
        print(validate_dataset(out / name, layout.vocab_size))
    plan = pack_dataset(out / "speech", out / "speech_packed", args.seq_length)
    print(f"packed: {plan.summary()}")

    step("4. megatron-core GPTDataset blend")
    from megatron_soda.data.gpt_blend import BlendConfig, build_gpt_datasets

    config = BlendConfig(
        [str(out / "speech"), str(out / "text")],
        [0.95, 0.05],
        seq_length=args.seq_length,
        split="100,0,0",
        layout=layout,
    )
    train, _, _ = build_gpt_datasets(config, (200, 0, 0))
    share = np.bincount(train.dataset_index[:200], minlength=2) / 200
    sample = train[0]["tokens"].numpy()
    print(
        f"achieved mix {share[0]:.3f} speech / {share[1]:.3f} text over 200 samples of {args.seq_length} tokens; "
        f"sample 0 is {layout.is_audio(sample).mean():.0%} audio tokens"
    )

    step("5. detokenize sequence 0 of shard 0")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_soda.codec import load_codec
    from megatron_soda.data.detokenize import detokenize, write_detokenized

    shard = IndexedDataset(str(out / "speech_job" / "shards" / "tokens_00000"))
    sequence = np.array(shard[0])  # a copy: megatron's views die with the dataset's mmap
    result = detokenize(sequence, tokenizer, load_codec(CodecConfig(name="mimi", random_init=True)))
    paths = write_detokenized(result, str(out / "detokenized"), "seq0")
    print("\n".join(result.parts[:4]) + ("\n..." if len(result.parts) > 4 else ""))
    print(f"-> {len(paths)} files in {out / 'detokenized'}")

    step("6. pretrain a tiny Qwen3 model on it (megatron-core, one CPU process)")
    from megatron_soda.pretrain import pretrain
    from megatron_soda.training.logger import iteration_records
    from megatron_soda.training.plan import parse_train_config

    metrics = out / "train_metrics.jsonl"
    pretrain(
        parse_train_config(
            [
                "--model",
                "tiny",
                "--tokenizer",
                out / "tokenizer",
                "--data-path",
                0.95,
                out / "speech",
                0.05,
                out / "text",
                "--split",
                "100,0,0",
                "--seq-length",
                512,
                "--micro-batch-size",
                2,
                "--global-batch-size",
                4,
                "--train-iters",
                args.train_iters,
                "--lr",
                3e-3,
                "--lr-warmup-iters",
                2,
                "--z-loss-weight",
                1e-4,
                "--save",
                out / "checkpoint",
                "--metrics-file",
                metrics,
                "--log-interval",
                max(1, args.train_iters // 5),
            ]
        )
    )
    losses = [record["lm loss"] for record in iteration_records(metrics)]
    print(f"loss {losses[0]:.2f} -> {losses[-1]:.2f} over {len(losses)} iterations; checkpoint in {out / 'checkpoint'}")

    step("7. export to Hugging Face")
    from megatron_soda.convert import ExportConfig, export_checkpoint

    export_checkpoint(
        ExportConfig(
            load=str(out / "checkpoint"), output=str(out / "hf"), tokenizer=str(out / "tokenizer"), progress=False
        )
    )
    print(f"{out / 'hf'}: a Qwen3ForCausalLM with its tokenizer (transformers loads it offline)")

    step("8. generate: speech from our checkpoint (TTS), a transcript through the export (ASR)")
    from megatron_soda.inference.model_source import ModelSource
    from megatron_soda.inference.run import GenerateConfig, run_generation
    from megatron_soda.inference.sampling import SamplingConfig

    first = json.loads((corpus / "manifest.jsonl").read_text(encoding="utf-8").splitlines()[0])
    codec = CodecConfig(name="mimi", random_init=True)
    for task, model, request, new_tokens in (
        (
            "tts",
            {"load": str(out / "checkpoint"), "tokenizer": str(out / "tokenizer")},
            {"prompt_text": first["text"]},
            200,
        ),
        ("asr", {"hf": str(out / "hf")}, {"prompt_audio": str(corpus / first["audio"])}, 40),
    ):
        summary = run_generation(
            GenerateConfig(
                task=task,
                model=ModelSource(**model),
                **request,
                output_dir=str(out / "generated" / task),
                structured_decoding=True,  # a barely trained model: keep its output well-formed
                sampling=SamplingConfig(max_new_tokens=new_tokens),
                progress=False,
                codec=codec,
            )
        )
        record = json.loads(Path(summary["records"]).read_text(encoding="utf-8").splitlines()[0])
        said = (
            f"{record['audio_seconds']} s of speech -> {record.get('wav')}" if task == "tts" else repr(record["text"])
        )
        print(f"{task} ({'--load' if 'load' in model else '--hf'}): {record['new_tokens']} tokens, {said}")

    step("9. evaluate: SODA's benchmark tasks on pairs made from the corpus")
    evaluate_demo(out, corpus, codec)

    print(f"\ndemo finished in {time.time() - start:.1f} s; outputs in {out}/")
    return 0


def evaluate_demo(out: Path, corpus: Path, codec) -> None:
    """sWUGGY's and tWUGGY's schema with pairs from the corpus (an utterance against itself played backwards;
    its transcript against the same words reversed) and ASR on its first utterances: the benchmark code
    SODA's models are judged by, run on the demo model (tiny and barely trained: about chance)."""
    import soundfile

    from megatron_soda.evaluation.report import table
    from megatron_soda.evaluation.run import EvaluateConfig, run_evaluation
    from megatron_soda.inference.model_source import ModelSource

    data = out / "eval_data"
    (data / "reversed").mkdir(parents=True)
    records = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    pairs = []
    for record in records[:12]:
        wave, rate = soundfile.read(corpus / record["audio"], dtype="float32")
        backwards = data / "reversed" / f"{record['id']}.wav"
        soundfile.write(backwards, wave[::-1], rate)
        words = record["text"].split()
        pairs.append(
            {
                "id": record["id"],
                "positive": str(corpus / record["audio"]),
                "negative": str(backwards),
                "positive_word": record["text"],
                "negative_word": " ".join(words[::-1]),
            }
        )
    (data / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    asr = [{"id": r["id"], "audio": str(corpus / r["audio"]), "text": r["text"]} for r in records[:4]]
    (data / "asr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in asr), encoding="utf-8")
    report = run_evaluation(
        EvaluateConfig(
            tasks=["swuggy", "twuggy", "asr"],
            input=[f"swuggy={data / 'pairs.jsonl'}", f"asr={data / 'asr.jsonl'}"],
            model=ModelSource(load=str(out / "checkpoint"), tokenizer=str(out / "tokenizer")),
            output_dir=str(out / "evaluation"),
            audio_cache=str(out / "evaluation" / "audio_codes"),
            max_new_tokens=40,
            progress=False,
            codec=codec,
        ),
        log=lambda message: None,
    )
    print("\n".join(table(report)))
    print(f"-> {out / 'evaluation' / 'report.json'} (per-item scores beside it)")


if __name__ == "__main__":
    sys.exit(main())
