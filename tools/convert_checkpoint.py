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

import os
import sys

from megatron_soda.flags import FlagCommands

EXPORT_HELP = "megatron dist checkpoint -> Hugging Face Qwen3ForCausalLM directory"
EXPORT_TEXT = (
    "Write a Hugging Face Qwen3ForCausalLM directory (config.json, safetensors shards, "
    "generation_config.json, tokenizer files) from a checkpoint saved by megatron_soda at any TP/PP."
)
IMPORT_HELP = "Hugging Face Qwen3 directory -> megatron dist checkpoint"
IMPORT_TEXT = (
    "Write a model-only megatron dist checkpoint (no optimizer state; a training run loading it starts its "
    "optimizer fresh) from a Hugging Face Qwen3 directory (config.json + safetensors, sharded or not)."
)


def build_parser() -> FlagCommands:
    from megatron_soda.convert import ExportConfig, ImportConfig

    return FlagCommands(
        {
            "export": (ExportConfig, EXPORT_HELP, EXPORT_TEXT, ExportConfig.check),
            "import": (ImportConfig, IMPORT_HELP, IMPORT_TEXT, ImportConfig.check),
        },
        prog=os.path.basename(__file__),
        description=__doc__,
    )


def main(argv=None) -> int:
    command, config = build_parser().parse(argv)
    from megatron_soda.convert import export_checkpoint, import_checkpoint

    run = export_checkpoint if command == "export" else import_checkpoint
    try:
        plan = run(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"convert_checkpoint {command}: error: {error}", file=sys.stderr)
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
