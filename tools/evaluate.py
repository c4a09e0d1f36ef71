#!/usr/bin/env python3
"""Evaluate a SODA model on SODA's benchmarks, from local copies of their public data.

    python tools/evaluate.py --load checkpoints/run --tokenizer tokenizers/soda --codec-path kyutai/mimi \\
        --tasks swuggy sblimp salmon twuggy tblimp --input swuggy=data/sWUGGY sblimp=data/sBLIMP salmon=data/salmon
    python tools/evaluate.py --hf exported/ --tasks hellaswag --input hellaswag=hellaswag_val.jsonl
    python tools/evaluate.py --hf exported/ --codec-path kyutai/mimi --tasks asr --input asr=test_clean.jsonl
    python tools/evaluate.py --load checkpoints/s2st --tokenizer tokenizers/soda --codec-path kyutai/mimi \
        --tasks s2st --input s2st=cvss_fr_en_test.jsonl --asr-model whisper-large-v3 --speaker-model wavlm-sv
    python tools/evaluate.py --compare eval/step1000 eval/step2000
    python tools/evaluate.py --prepare --tokenizer tokenizers/soda --codec-path kyutai/mimi --tasks swuggy tblimp \
        --input swuggy=data/sWUGGY sblimp=data/sBLIMP --output-dir eval/prepared   # for pretrain --eval-tasks-data

Likelihood tasks score BOS + <|audio_start|>A<|audio_end|> (or <|text_start|>T<|text_end|>) by the mean
log-probability of the content tokens; a pair is right when the positive scores higher (--codebooks 0
scores the semantic codebook alone). ASR and TTS generate with SODA's prompts and sampling and report
WER after SODA's normalisation. S2ST translates each source (text greedy unless --text-temperature,
then speech sampled as TTS) and reports sacrebleu's BLEU of the text (with its signature), ASR-BLEU of the
speech and, with --speaker-model, speaker similarity to the source. Writes report.json (per task: metric,
value, n, skipped, breakdown, notes) and <task>.items.jsonl (per item) under --output-dir, and prints the
table.
"""

import os
import sys

from megatron_soda.evaluation.run import EvaluateConfig
from megatron_soda.flags import FlagParser
from megatron_soda.tool_json import write_json


def build_parser() -> FlagParser:
    return FlagParser(EvaluateConfig, prog=os.path.basename(__file__), description=__doc__, check=EvaluateConfig.check)


def main(argv=None) -> int:
    config = build_parser().parse(argv)
    from megatron_soda.evaluation.report import compare, read_report, table
    from megatron_soda.logs import quiet_logs

    quiet_logs(verbose=False)
    text = config.json != "-"
    try:
        if config.compare is not None:
            reports = {path: read_report(path) for path in config.compare}
            if text:
                print("\n".join(compare(reports)))
            write_json(config.json, {"compare": reports})
            return 0
        from megatron_soda.evaluation.run import run_evaluation

        report = run_evaluation(config, log=(lambda m: print(m, file=sys.stderr)))
    except (ValueError, OSError) as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 1
    if config.prepare:
        if text:
            for task, counts in report["tasks"].items():
                print(f"{task}: {counts['items']} items prepared, {counts['skipped']} skipped")
            print(f"-> {report['prepared']} (pretrain --eval-tasks-data)")
        write_json(config.json, report)
        return 0
    if text:
        print("\n".join(table(report)))
        print(f"-> {os.path.join(config.output_dir, 'report.json')}")
    write_json(config.json, report)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
