#!/usr/bin/env python3
"""Token sequences -> transcripts and wav files (one clip per audio segment).

    python tools/detokenize.py --tokenizer tokenizers/soda --input data/speech/shards/tokens_00000 --index 0 1 \\
        --codec mimi --codec-path kyutai/mimi --output-dir out/
    python tools/detokenize.py --tokenizer tokenizers/soda --input generated.txt --input-format strings --no-audio

--input is read as --input-format says: sequences of a dataset (with --index), lines of a file in the PUA
string form (strings), or lines of a file of JSON id lists (ids). Without a codec (--no-audio) only the
transcripts are written.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from typing import List, Literal, Optional

from megatron_soda.checks import check_at_least, check_file, check_output_dir
from megatron_soda.codec.cli import CodecConfig, check_codec
from megatron_soda.data.text_pipeline import check_tokenizer, load_tokenizer
from megatron_soda.flags import FlagParser, flag
from megatron_soda.tool_json import check_json_path, write_json


@dataclass
class DetokenizeConfig:
    tokenizer: str
    """SODA tokenizer directory (tools/build_tokenizer.py)."""
    input: str
    """the sequences: a dataset prefix (no .bin/.idx), or a file of sequences (see --input-format)."""
    input_format: Literal["dataset", "strings", "ids"] = "dataset"
    """what --input is: dataset (an IndexedDataset prefix), strings (one sequence per line in the PUA string
    form) or ids (one JSON list of token ids per line)."""
    index: Optional[List[int]] = field(default=None, metadata=flag(nargs="*"))
    """sequence indices of a dataset --input (default: the first 10)."""
    output_dir: str = "detokenized"
    """where .txt and .wav files go."""
    audio: bool = True
    """decode audio segments to wav with the codec (--no-audio: transcripts only, no codec)."""
    progress: bool = True
    """show a progress bar over the sequences."""
    json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
    """also write the summary as one JSON object to PATH ("-": to stdout, in place of the text)."""
    codec: CodecConfig = field(default_factory=CodecConfig)

    def check(self) -> None:
        check_tokenizer("--tokenizer", self.tokenizer)
        if self.input_format == "dataset":
            if self.input.endswith((".bin", ".idx")):
                raise ValueError(f"--input {self.input}: give the dataset prefix, without .bin or .idx")
            if os.path.isfile(self.input) and not os.path.isfile(self.input + ".idx"):
                raise ValueError(
                    f"--input {self.input} is a file, not a dataset prefix: give --input-format strings or ids "
                    "for a file of sequences"
                )
            for suffix in (".idx", ".bin"):
                check_file("--input", self.input + suffix)
        else:
            if self.index is not None:
                raise ValueError(
                    f"--index selects sequences of a dataset; lines of --input-format {self.input_format} are all read"
                )
            check_file("--input", self.input)
        for index in self.index or ():
            check_at_least("--index", index, 0)
        check_output_dir("--output-dir", self.output_dir)
        check_json_path(self.json)
        if self.audio:
            check_codec(self.codec)


def read_sequences(config: DetokenizeConfig, tokenizer):
    """(name, ids) for every sequence --input holds, in order."""
    if config.input_format == "dataset":
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        dataset = IndexedDataset(config.input)
        for index in config.index or range(min(len(dataset), 10)):
            if index >= len(dataset):
                raise ValueError(f"--index {index}: --input {config.input} has {len(dataset)} sequences")
            yield f"seq{index}", list(dataset[index])
    elif config.input_format == "strings":
        with open(config.input, encoding="utf-8", newline="\n") as f:
            for number, line in enumerate(f):
                if line.rstrip("\n"):
                    yield f"line{number}", tokenizer.string_to_ids(line.rstrip("\n"))
    else:
        with open(config.input, encoding="utf-8") as f:
            for number, line in enumerate(f):
                if line.strip():
                    try:
                        yield f"line{number}", json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"--input {config.input} line {number + 1}: not a JSON list of ids ({error})")


def _total(config: DetokenizeConfig) -> Optional[int]:
    """How many sequences a progress bar counts to (None: unknown before reading)."""
    return len(config.index) if config.input_format == "dataset" and config.index else None


def build_parser() -> FlagParser:
    return FlagParser(
        DetokenizeConfig, prog=os.path.basename(__file__), description=__doc__, check=DetokenizeConfig.check
    )


def main(argv=None) -> int:
    parser = build_parser()
    config = parser.parse(argv)
    from tqdm import tqdm

    from megatron_soda.data.detokenize import detokenize, write_detokenized

    try:
        tokenizer = load_tokenizer("--tokenizer", config.tokenizer)
        codec = None
        if config.audio:
            from megatron_soda.codec.loading import load_codec

            codec = load_codec(config.codec)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    text = config.json != "-"
    sequences = []
    failures = 0
    try:
        with tqdm(
            total=_total(config), unit="seq", desc="detokenize", disable=not config.progress, file=sys.stderr
        ) as bar:
            for name, ids in read_sequences(config, tokenizer):
                bar.update()
                try:
                    result = detokenize(ids, tokenizer, codec)
                except ValueError as error:
                    tqdm.write(f"{name}: {error}", file=sys.stderr)
                    sequences.append({"name": name, "error": str(error)})
                    failures += 1
                    continue
                paths = write_detokenized(result, config.output_dir, name)
                sequences.append(
                    {"name": name, "texts": len(result.texts), "audio_segments": len(result.clips), "files": paths}
                )
                if text:
                    tqdm.write(
                        f"{name}: {len(result.texts)} text and {len(result.clips)} audio segments -> {', '.join(paths)}"
                    )
    except (ValueError, OSError) as error:
        print(f"detokenize: error: {error}", file=sys.stderr)
        return 1
    write_json(config.json, {"output_dir": config.output_dir, "sequences": sequences, "failures": failures})
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
