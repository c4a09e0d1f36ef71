#!/usr/bin/env python3
"""Generate with a SODA model: ASR, TTS with a voice prompt, speech continuation, text continuation, and
voice-preserving speech-to-speech translation (a model fine-tuned on SODA's S2ST sequence).

    python tools/generate.py --task asr --load checkpoints/run --tokenizer tokenizers/soda \\
        --codec-path kyutai/mimi --input requests.jsonl --output-dir out/asr
    python tools/generate.py --task tts --hf exported/ --codec-path kyutai/mimi \\
        --prompt-text "Hello there." --reference-audio voice.wav --reference-text "The voice's words."
    python tools/generate.py --task s2st --load checkpoints/s2st --tokenizer tokenizers/soda \
        --codec-path kyutai/mimi --input cvss_fr_en.jsonl --output-dir out/s2st

The model is our checkpoint (--load, any TP/PP layout, run at TP=1 with a KV cache) or a Hugging Face
export (--hf, through transformers' generate); the same flags drive both. --input is a JSONL manifest
(audio, text, reference_audio, reference_text, id per line). Sampling defaults to SODA's for each task
(asr: temperature 0.5, top-p 0.8, 200 new tokens, stop at <|text_end|>; tts: 0.9, 0.8, 1500, stop at
<|audio_end|>); --temperature 0 is greedy. Writes generations.jsonl (one record per request: text or
wav path, ids, what was dropped from malformed output, tokens/s), the wav files and summary.json.

s2st (--input lines: source_audio, source_language such as "fr", optional source_text, target_language
(default en), id; or --prompt-audio, --source-language [--prompt-text, --translate-into]) writes the
translation text, then its speech with the source speech still in context (the speaker's voice); each
record holds both, and the speech's wav. --temperature, --top-k, --top-p and --max-new-tokens sample the
speech (default SODA's TTS: 0.9, 0.8, 1500); the text is greedy (at most 200 tokens) unless
--text-temperature (with --text-top-p, --text-max-new-tokens) says otherwise; --seed seeds both.
"""

import os
import sys

from megatron_soda.flags import FlagParser
from megatron_soda.inference.run import GenerateConfig
from megatron_soda.tool_json import write_json


def build_parser() -> FlagParser:
    return FlagParser(GenerateConfig, prog=os.path.basename(__file__), description=__doc__, check=GenerateConfig.check)


def main(argv=None) -> int:
    config = build_parser().parse(argv)
    from megatron_soda.inference.run import run_generation
    from megatron_soda.logs import quiet_logs

    quiet_logs(verbose=False)
    text = config.json != "-"
    try:
        summary = run_generation(config, log=(lambda m: print(m, file=sys.stderr)))
    except (ValueError, OSError) as error:
        print(f"generate: error: {error}", file=sys.stderr)
        return 1
    if text:
        print(
            f"{summary['generated']} of {summary['requests']} requests generated ({summary['new_tokens']} new tokens, "
            f"{summary['tokens_per_second']} tokens/s) -> {summary['records']}"
        )
        for skipped in summary["skipped"]:
            print(f"skipped: {skipped['message']}")
    write_json(config.json, summary)
    return 1 if summary["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
