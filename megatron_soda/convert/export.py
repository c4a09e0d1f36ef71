"""megatron-core dist checkpoint (saved at any TP/PP/VP) -> Hugging Face ``Qwen3ForCausalLM`` directory.

No model is built. The checkpoint's metadata gives every tensor's global shape, which is checked
against the shape its ``extra["model"]`` names before anything is written; then tensors are read one
layer at a time (dist checkpointing assembles each from whatever shards it was saved in), converted by
``names`` and written shard by shard, so memory stays near one output shard plus one layer. Optimizer
and RNG state in the checkpoint are not read.

The output directory holds ``config.json``, ``generation_config.json``, the weights (sharded at
``max_shard_size``) and, given a SODA tokenizer directory, that tokenizer set up for Hugging Face users
(``tokenizer.builder.save_hf_tokenizer``: pad token, ``model_max_length``, BOS as training puts it).
``AutoModelForCausalLM``, ``AutoTokenizer`` and ``pipeline("text-generation")`` load it offline, without
warnings. It appears under its name only once complete (``hf_files``).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from megatron_soda.checks import check_at_least, check_dir, check_output_dir
from megatron_soda.convert import hf_config
from megatron_soda.convert.hf_files import (
    INDEX_FILE,
    ShardWriter,
    check_output,
    parse_size,
    plan_shards,
    shard_file_names,
    staged_directory,
    tensor_bytes,
)
from megatron_soda.convert.names import (
    ConversionError,
    TensorMap,
    checkpoint_shape,
    hf_shapes,
    ordered_items,
    tensor_maps,
    to_hf,
)
from megatron_soda.flags import flag
from megatron_soda.models.presets import ModelShape
from megatron_soda.models.shape_record import Record, shape_from_record
from megatron_soda.tokenizer.layout import VocabLayout

MODEL_FILES = ("config.json", "generation_config.json", INDEX_FILE)
"""Files of the export itself; a tokenizer directory's files of these names are not copied."""


@dataclass
class ExportConfig:
    """What ``tools/convert_checkpoint.py export`` asks for; its fields are the command's flags."""

    load: str
    """checkpoint directory (its latest checkpoint, or --iteration's) or one iter_NNNNNNN directory."""
    output: str
    """Hugging Face directory to create."""
    tokenizer: Optional[str] = None
    """SODA tokenizer directory (tools/build_tokenizer.py): sets the vocabulary and is copied into the output;
    without it the vocabulary is the one the checkpoint records (imports do), else SODA's 144,644 ids, and no
    tokenizer is written."""
    iteration: Optional[int] = None
    """checkpoint iteration to export (default: the latest)."""
    dtype: Optional[str] = field(default=None, metadata=flag(choices=tuple(hf_config.DTYPES)))
    """dtype of the exported weights (default: the checkpoint's)."""
    max_shard_size: str = "5GB"
    """largest safetensors file, e.g. 5GB, 500MB, 2GiB (transformers' default)."""
    overwrite: bool = False
    """replace an existing output directory."""
    dry_run: bool = False
    """check everything and print the tensor mapping with shapes; write nothing."""
    progress: bool = True
    """show a progress bar over tensors."""

    def check(self) -> None:
        """Refuses flags that cannot work, naming the flag; reads no checkpoint (``plan_export`` does)."""
        from megatron_soda.data.text_pipeline import check_tokenizer
        from megatron_soda.training.checkpointing import LATEST_FILE, checkpoint_dir

        check_dir("--load", self.load, hint=" (give the directory pretrain --save wrote)")
        check_at_least("--iteration", self.iteration, 0)
        load = Path(self.load)
        if not (re.fullmatch(r"iter_\d{7}", load.name) and (load / "metadata.json").is_file()):
            if self.iteration is not None and not checkpoint_dir(load, self.iteration).is_dir():
                raise ConversionError(
                    f"--load {load} holds no checkpoint of --iteration {self.iteration} "
                    f"({checkpoint_dir(load, self.iteration).name} not found)"
                )
            if self.iteration is None and not (load / LATEST_FILE).is_file():
                raise ConversionError(
                    f"--load {load} holds no checkpoint (no {LATEST_FILE}): give the directory "
                    f"pretrain --save wrote, or one iter_NNNNNNN directory in it"
                )
        check_output_dir("--output", self.output)
        if Path(self.output).exists() and not self.overwrite:
            raise ConversionError(f"--output {self.output} exists; pass --overwrite to replace it")
        if self.tokenizer is not None:
            check_tokenizer("--tokenizer", self.tokenizer)
        parse_size(self.max_shard_size)


@dataclass
class ExportPlan:
    """Everything checked; what would be written."""

    checkpoint: Path
    """The ``iter_NNNNNNN`` directory read."""
    record: Record
    """Its ``extra["model"]``."""
    shape: ModelShape
    dtype: torch.dtype
    layout: Optional[VocabLayout]
    """The vocabulary's layout (special ids), from --tokenizer, else SODA's for its vocabulary size, else None."""
    items: List[Tuple[TensorMap, Optional[int]]]
    """Checkpoint tensors (per layer for stacks) in output order."""
    metadata: Dict[str, Any]
    """The checkpoint's tensor metadata (global shape and dtype per key)."""
    shards: List[List[str]]
    """Hugging Face tensor names per output file."""

    @property
    def bos_token_id(self) -> Optional[int]:
        return self.layout.bos_id if self.layout else None

    @property
    def eos_token_id(self) -> Optional[int]:
        return self.layout.eos_id if self.layout else None

    def mapping_lines(self) -> List[str]:
        """``megatron-name shape -> HF-name shape`` for every tensor, and the files they go to."""
        lines = [
            f"{self.checkpoint}: model {self.record if isinstance(self.record, str) else 'from extra[model]'}, "
            f"{self.shape.num_layers} layers, vocabulary {self.shape.vocab_size} "
            f"(checkpoint rows {self.shape.padded_vocab_size()}), tied={self.shape.tie_embeddings}, "
            f"dtype {hf_config.dtype_name(self.dtype)}"
        ]
        for tensor, layer in self.items:
            stored = tuple(self.metadata[tensor.megatron].global_shape)
            one = stored[1:] if tensor.layered else stored
            targets = ", ".join(f"{name} {tuple(s)}" for name, s in hf_shapes(tensor, self.shape, layer).items())
            lines.append(f"{tensor.describe(layer)} {one} -> {targets}")
        files = shard_file_names(len(self.shards))
        lines.append(f"files: {', '.join(files)}" + (f" + {INDEX_FILE}" if len(files) > 1 else ""))
        return lines


def resolve_checkpoint(load, iteration: Optional[int]) -> dict:
    """``read_checkpoint_info`` of a save directory, or of one ``iter_NNNNNNN`` directory given directly."""
    from megatron_soda.training.checkpointing import read_checkpoint_info

    load = Path(load)
    match = re.fullmatch(r"iter_(\d{7})", load.name)
    if match and iteration is None and (load / "metadata.json").is_file():
        return read_checkpoint_info(load.parent, int(match.group(1)))
    return read_checkpoint_info(load, iteration)


def _vocabulary(tokenizer: Optional[str]) -> Optional[VocabLayout]:
    """The layout of a SODA tokenizer directory (checked); None without one."""
    if tokenizer is None:
        return None
    from megatron_soda.tokenizer import load_soda_tokenizer

    if not Path(tokenizer).is_dir():
        raise ConversionError(f"--tokenizer {tokenizer}: give the directory tools/build_tokenizer.py wrote")
    return load_soda_tokenizer(tokenizer).layout


def plan_export(config: ExportConfig) -> ExportPlan:
    """Reads the checkpoint's common state and metadata and checks them against its model; writes nothing."""
    from megatron.core import dist_checkpointing

    from megatron_soda.tokenizer.layout import SODA_LAYOUT

    check_output(Path(config.output), config.overwrite)
    info = resolve_checkpoint(config.load, config.iteration)
    path = info["path"]
    output = Path(config.output).resolve()
    if output == path.resolve() or output in path.resolve().parents:
        raise ConversionError(f"--output {config.output} would replace the checkpoint {path} being exported")
    extra = info.get("extra") or {}
    if "model" not in extra:
        raise ConversionError(
            f"{path}: its extra state names no model (extra has {sorted(extra)}); "
            f"it was not saved by megatron_soda.pretrain or tools/convert_checkpoint.py"
        )
    layout = _vocabulary(config.tokenizer)
    vocab_size = layout.vocab_size if layout else None
    recorded = extra.get("vocab_size")  # stored by imports; training stores the padded size only
    if vocab_size is not None and recorded is not None and vocab_size != recorded:
        raise ConversionError(
            f"{path}: the model's vocabulary has {recorded} ids, the tokenizer {config.tokenizer} "
            f"{vocab_size}: pass the tokenizer the model was trained with"
        )
    shape = shape_from_record(extra["model"], vocab_size or recorded, str(path))
    if layout is None and shape.vocab_size == SODA_LAYOUT.vocab_size:
        layout = SODA_LAYOUT
    hf_config.check_convertible(shape, str(path))
    metadata = dist_checkpointing.load_tensors_metadata(str(path))
    _check_tensors(path, metadata, shape, extra)

    dtype = hf_config.parse_dtype(config.dtype) if config.dtype else metadata["embedding.word_embeddings.weight"].dtype
    items = ordered_items(shape)
    sizes = [(name, tensor_bytes(s, dtype)) for m, layer in items for name, s in hf_shapes(m, shape, layer).items()]
    shards = plan_shards(sizes, parse_size(config.max_shard_size))
    return ExportPlan(path, extra["model"], shape, dtype, layout, items, metadata, shards)


def _check_tensors(path: Path, metadata: Dict[str, Any], shape: ModelShape, extra: dict) -> None:
    """Every tensor the model needs, none it does not know, each of the right global shape; else one error
    naming them."""
    model_keys = {
        key for key in metadata if not re.match(r"(chained_\d+\.)?optimizer\.", key)
    }  # optimizer state: not read
    maps = {m.megatron: m for m in tensor_maps(shape)}
    problems = []
    missing = sorted(set(maps) - model_keys)
    unknown = sorted(model_keys - set(maps))
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unknown:
        hint = " (an LM head: was the model saved untied?)" if unknown == ["output_layer.weight"] else ""
        problems.append(f"tensors this model does not have: {', '.join(unknown)}{hint}")
    rows = extra.get("padded_vocab_size")
    if rows is not None and rows != shape.padded_vocab_size():
        problems.append(
            f"its extra state records {rows} vocabulary rows, but a vocabulary of {shape.vocab_size} pads "
            f"to {shape.padded_vocab_size()}: pass the tokenizer the model was trained with (--tokenizer)"
        )
    for key in sorted(set(maps) & model_keys):
        found, expected = tuple(metadata[key].global_shape), checkpoint_shape(maps[key], shape)
        if found != expected:
            problems.append(f"tensor {key} has shape {found}, but the model needs {expected}")
    if problems:
        raise ConversionError(
            f"checkpoint {path} does not hold the model its extra state names "
            f"({_describe(shape, extra['model'])}): " + "; ".join(problems)
        )


def _describe(shape: ModelShape, record: Record) -> str:
    name = f"preset {record!r}" if isinstance(record, str) else "shape from extra['model']"
    return (
        f"{name}: {shape.num_layers} layers, hidden {shape.hidden_size}, {shape.num_attention_heads} heads, "
        f"{shape.num_query_groups} groups, head dim {shape.kv_channels}, FFN {shape.ffn_hidden_size}, "
        f"vocabulary {shape.vocab_size}, tied={shape.tie_embeddings}"
    )


def _read(
    path: Path, metadata: Dict[str, Any], tensors: List[TensorMap], layer: Optional[int], num_layers: int
) -> Dict[str, torch.Tensor]:
    """Whole tensors, or one layer's slice of layer stacks, assembled from the checkpoint's shards."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    request = {}
    for tensor in tensors:
        meta = metadata[tensor.megatron]
        if layer is None:
            request[tensor.megatron] = ShardedTensor.from_rank_offsets(
                tensor.megatron, torch.empty(tuple(meta.global_shape), dtype=meta.dtype), replica_id=0
            )
        else:
            request[tensor.megatron] = ShardedTensor.from_rank_offsets(
                tensor.megatron,
                torch.empty((1, *meta.global_shape[1:]), dtype=meta.dtype),
                (0, layer, num_layers),
                replica_id=0,
            )
    loaded = dist_checkpointing.load(request, str(path), validate_access_integrity=False)
    return {key: loaded[key][0] if layer is not None else loaded[key] for key in request}


def export_checkpoint(config: ExportConfig) -> ExportPlan:
    """Plans (``plan_export``) and, unless ``config.dry_run``, writes the Hugging Face directory."""
    plan = plan_export(config)
    if not config.dry_run:
        write_export(plan, config)
    return plan


def write_export(plan: ExportPlan, config: ExportConfig) -> Path:
    from tqdm import tqdm

    from megatron_soda.convert.solo import one_process_group

    shape, output = plan.shape, Path(config.output)
    total = sum(len(shard) for shard in plan.shards)
    with (
        staged_directory(output, config.overwrite) as scratch,
        one_process_group(),
        tqdm(total=total, unit="tensor", desc=f"export {output.name}", disable=not config.progress) as bar,
    ):
        writer = ShardWriter(scratch, plan.shards)
        # One read per run of items: a layer's stacks together, whole tensors around them.
        for layer, run in groupby(plan.items, key=lambda item: item[1]):
            tensors = [tensor for tensor, _ in run]
            values = _read(plan.checkpoint, plan.metadata, tensors, layer, shape.num_layers)
            for tensor in tensors:
                for name, value in to_hf(tensor, values[tensor.megatron].to(plan.dtype), shape, layer).items():
                    writer.add(name, value)
                    bar.update()
        writer.finish()
        _write_json(
            scratch / "config.json", hf_config.hf_config(shape, plan.dtype, plan.bos_token_id, plan.eos_token_id)
        )
        stops = [plan.layout.text_end_id, plan.layout.audio_end_id] if plan.layout else None
        _write_json(
            scratch / "generation_config.json",
            hf_config.generation_config(plan.bos_token_id, plan.eos_token_id, stops),
        )
        if config.tokenizer is not None:
            from megatron_soda.tokenizer.builder import save_hf_tokenizer

            _copy_tokenizer(Path(config.tokenizer), scratch)
            save_hf_tokenizer(config.tokenizer, scratch, model_max_length=shape.max_position_embeddings)
    return output


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _copy_tokenizer(source: Path, target: Path) -> None:
    """The tokenizer directory's other files (``save_hf_tokenizer`` writes the Hugging Face ones), model
    files excepted."""
    from megatron_soda.tokenizer.builder import HF_TOKENIZER_FILES

    for entry in sorted(source.iterdir()):
        if (
            entry.is_file()
            and entry.name not in MODEL_FILES + HF_TOKENIZER_FILES
            and not entry.name.endswith(".safetensors")
        ):
            shutil.copy2(entry, target / entry.name)
