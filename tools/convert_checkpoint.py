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
appear under their name only once complete. Checkpoint directories take Megatron-LM's --load / --save, as
pretraining does; --json writes the summary (and the tensor mapping) as JSON.
"""

import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from megatron_soda.flags import FlagCommands, flag
from megatron_soda.tool_json import check_json_path, write_json

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


def with_json(base):
    """``base`` (the library's config of a command) with the tool's ``--json`` flag added."""

    @dataclass
    class Command(base):
        json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
        """also write the summary and tensor mapping as one JSON object to PATH ("-": to stdout, in place of
        the text)."""

        def check(self) -> None:
            base.check(self)
            check_json_path(self.json)

    return Command


def build_parser() -> FlagCommands:
    # Imported here: the conversion modules load torch.
    from megatron_soda.convert import ExportConfig, ImportConfig

    export, import_ = with_json(ExportConfig), with_json(ImportConfig)
    return FlagCommands(
        {
            "export": (export, EXPORT_HELP, EXPORT_TEXT, export.check),
            "import": (import_, IMPORT_HELP, IMPORT_TEXT, import_.check),
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
    target_flag = "output" if command == "export" else "save"
    target = getattr(config, target_flag)
    mapping = plan.mapping_lines()
    if config.json != "-":
        if config.dry_run:
            print("\n".join(mapping))
            print("dry run: nothing written")
        else:
            print(f"{command}: wrote {target}")
    write_json(
        config.json,
        {
            "command": command,
            "dry_run": config.dry_run,
            target_flag: target,
            "tensors": len(plan.items),
            "mapping": mapping,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
