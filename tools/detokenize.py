#!/usr/bin/env python3
"""Token sequences -> transcripts and wav files (one clip per audio segment).

    python tools/detokenize.py --tokenizer tokenizers/soda --dataset data/speech/shards/tokens_00000 --index 0 1 \\
        --codec mimi --codec-path kyutai/mimi --output-dir out/
    python tools/detokenize.py --tokenizer tokenizers/soda --strings generated.txt --no-audio

Sources: sequences of a dataset (--dataset with --index), lines of a file in the PUA string form
(--strings), or lines of a file of JSON id lists (--ids). Without a codec (--no-audio) only the
transcripts are written.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

from megatron_soda.codec.cli import CodecConfig, check_codec
from megatron_soda.data.text_pipeline import check_tokenizer, load_tokenizer
from megatron_soda.flags import FlagParser, check_at_least, check_file, check_output_dir, flag


@dataclass
class DetokenizeConfig:
    tokenizer: str
    """SODA tokenizer directory (tools/build_tokenizer.py)."""
    dataset: Optional[str] = None
    """source: a dataset prefix (.bin/.idx); one of --dataset, --strings, --ids."""
    strings: Optional[str] = None
    """source: a file of sequences in the PUA string form, one per line."""
    ids: Optional[str] = None
    """source: a file of JSON lists of token ids, one per line."""
    index: Optional[List[int]] = field(default=None, metadata=flag(nargs="*"))
    """sequence indices of --dataset (default: the first 10)."""
    output_dir: str = "detokenized"
    """where .txt and .wav files go."""
    audio: bool = True
    """decode audio segments to wav with the codec (--no-audio: transcripts only, no codec)."""
    codec: CodecConfig = field(default_factory=CodecConfig)

    def check(self) -> None:
        check_tokenizer("--tokenizer", self.tokenizer)
        sources = [name for name in ("dataset", "strings", "ids") if getattr(self, name) is not None]
        if len(sources) != 1:
            given = f" (got {', '.join('--' + name for name in sources)})" if sources else ""
            raise ValueError(f"give exactly one source: --dataset, --strings or --ids{given}")
        if self.dataset is not None:
            if self.dataset.endswith((".bin", ".idx")):
                raise ValueError(f"--dataset {self.dataset}: give the dataset prefix, without .bin or .idx")
            for suffix in (".idx", ".bin"):
                check_file("--dataset", self.dataset + suffix)
        elif self.index is not None:
            raise ValueError("--index selects sequences of --dataset; lines of --strings/--ids are all read")
        for name in ("strings", "ids"):
            if getattr(self, name) is not None:
                check_file("--" + name, getattr(self, name))
        for index in self.index or ():
            check_at_least("--index", index, 0)
        check_output_dir("--output-dir", self.output_dir)
        if self.audio:
            check_codec(self.codec)


def read_sequences(config: DetokenizeConfig, tokenizer):
    if config.dataset:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        dataset = IndexedDataset(config.dataset)
        for index in config.index or range(min(len(dataset), 10)):
            if index >= len(dataset):
                raise ValueError(f"--index {index}: --dataset {config.dataset} has {len(dataset)} sequences")
            yield f"seq{index}", list(dataset[index])
    elif config.strings:
        with open(config.strings, encoding="utf-8", newline="\n") as f:
            for number, line in enumerate(f):
                if line.rstrip("\n"):
                    yield f"line{number}", tokenizer.string_to_ids(line.rstrip("\n"))
    else:
        with open(config.ids, encoding="utf-8") as f:
            for number, line in enumerate(f):
                if line.strip():
                    try:
                        yield f"line{number}", json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"--ids {config.ids} line {number + 1}: not a JSON list of ids ({error})")


def main(argv=None) -> int:
    parser = FlagParser(
        DetokenizeConfig, prog=os.path.basename(__file__), description=__doc__, check=DetokenizeConfig.check
    )
    config = parser.parse(argv)
    from megatron_soda.data.detokenize import detokenize, write_detokenized

    try:
        tokenizer = load_tokenizer("--tokenizer", config.tokenizer)
        codec = None
        if config.audio:
            from megatron_soda.codec.loading import load_codec

            codec = load_codec(config.codec)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    failures = 0
    try:
        for name, ids in read_sequences(config, tokenizer):
            try:
                result = detokenize(ids, tokenizer, codec)
            except ValueError as error:
                print(f"{name}: {error}", file=sys.stderr)
                failures += 1
                continue
            paths = write_detokenized(result, config.output_dir, name)
            print(f"{name}: {len(result.texts)} text and {len(result.clips)} audio segments -> {', '.join(paths)}")
    except (ValueError, OSError) as error:
        print(f"detokenize: error: {error}", file=sys.stderr)
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
