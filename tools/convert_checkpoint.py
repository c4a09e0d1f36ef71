#!/usr/bin/env python3
"""Convert between megatron-soda training checkpoints and Hugging Face Qwen3 models.

    # a training checkpoint (any TP/PP) -> a Hugging Face directory for transformers
    python tools/convert_checkpoint.py export --load ckpt --tokenizer tokenizers/soda --output hf/soda-600m

    # a Hugging Face Qwen3 directory -> a checkpoint that `python -m megatron_soda.pretrain --load` continues
    python tools/convert_checkpoint.py import --hf hf/soda-600m --save ckpt_from_hf \\
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2

Runs as one process (no torchrun): dist checkpoints reshard on load, so a checkpoint saved at TP=8 x PP=4
exports here, and an imported one loads at the TP/PP given (checked now). --dry-run checks everything and
prints the tensor mapping (megatron name and shape -> Hugging Face name and shape) without writing. Outputs
appear under their name only once complete.
"""

import argparse
import sys
from dataclasses import fields

_DTYPES = "bf16 | fp32 | fp16"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{export,import}")

    export = commands.add_parser("export", help="megatron dist checkpoint -> Hugging Face Qwen3ForCausalLM directory",
                                 description="Write a Hugging Face Qwen3ForCausalLM directory (config.json, "
                                             "safetensors shards, generation_config.json, tokenizer files) from a "
                                             "checkpoint saved by megatron_soda at any TP/PP.")
    export.add_argument("--load", required=True,
                        help="checkpoint directory (its latest checkpoint, or --iteration's) or one iter_NNNNNNN directory")
    export.add_argument("--output", required=True, help="Hugging Face directory to create")
    export.add_argument("--tokenizer", help="SODA tokenizer directory (tools/build_tokenizer.py): sets the vocabulary "
                                            "and is copied into the output; without it the vocabulary is the one the "
                                            "checkpoint records (imports do), else SODA's 144,644 ids, and no "
                                            "tokenizer is written")
    export.add_argument("--iteration", type=int, help="iteration to export (default: the latest)")
    export.add_argument("--dtype", help=f"{_DTYPES} (default: the checkpoint's)")
    export.add_argument("--max-shard-size", default="5GB", help="largest safetensors file, e.g. 5GB, 500MB (default 5GB)")

    imp = commands.add_parser("import", help="Hugging Face Qwen3 directory -> megatron dist checkpoint",
                              description="Write a model-only megatron dist checkpoint (no optimizer state; a training "
                                          "run loading it starts its optimizer fresh) from a Hugging Face Qwen3 "
                                          "directory (config.json + safetensors, sharded or not).")
    imp.add_argument("--hf", required=True, help="Hugging Face Qwen3 directory")
    imp.add_argument("--save", required=True, help="checkpoint directory to write (pretrain --load reads it)")
    imp.add_argument("--dtype", help=f"{_DTYPES} (default: config.json's dtype, else the weights')")
    imp.add_argument("--tensor-model-parallel-size", type=int, default=1,
                     help="TP the checkpoint will be loaded at: checked against the model now (default 1)")
    imp.add_argument("--pipeline-model-parallel-size", type=int, default=1,
                     help="PP the checkpoint will be loaded at: checked against the model now (default 1)")

    for sub, what in ((export, "output directory"), (imp, "directory that already holds checkpoints")):
        sub.add_argument("--overwrite", action="store_true", help=f"replace an existing {what}")
        sub.add_argument("--dry-run", action="store_true",
                         help="check everything and print the tensor mapping with shapes; write nothing")
        sub.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    from megatron_soda.convert import ExportConfig, ImportConfig, export_checkpoint, import_checkpoint

    config_class, run = (ExportConfig, export_checkpoint) if command == "export" else (ImportConfig, import_checkpoint)
    config = config_class(**{f.name: args[f.name] for f in fields(config_class) if f.name in args})
    try:
        plan = run(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"convert_checkpoint {command}: {error}", file=sys.stderr)
        return 2
    if config.dry_run:
        print("\n".join(plan.mapping_lines()))
        print("dry run: nothing written")
    else:
        target = config.output if command == "export" else config.save
        print(f"{command}: wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
