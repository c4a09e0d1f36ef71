"""Hugging Face ``Qwen3ForCausalLM`` directory -> megatron-core dist checkpoint that training continues from.

Every file is checked against config.json (names, shapes, a tied model's optional ``lm_head``) before
anything is built or written. Then one TP=1/PP=1 model is built in this process (memory: the whole
model in the chosen dtype) and filled; megatron-core's own ``sharded_state_dict`` gives each parameter's
checkpoint key, so TE-spec names, layer stacking and TP factories stay megatron's business. It is saved
by ``checkpointing.save_checkpoint`` as a *model-only* checkpoint (no optimizer, no RNG state), which
loads at any TP/PP (dist checkpoints reshard on load); a training run loading it starts its optimizer
fresh. ``extra["model"]`` records the matching preset's name, or the shape's fields (``models.shape_record``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from megatron_soda.checks import check_at_least, check_dir, check_output_dir
from megatron_soda.convert import hf_config
from megatron_soda.convert.hf_files import HFTensors
from megatron_soda.convert.names import (
    LAYERS,
    LM_HEAD,
    ConversionError,
    TensorMap,
    hf_shapes,
    megatron_shape,
    ordered_items,
    to_megatron,
)
from megatron_soda.flags import flag
from megatron_soda.models.presets import ModelShape
from megatron_soda.models.shape_record import Record, record_for

EMBEDDING = "model.embed_tokens.weight"


@dataclass
class ImportConfig:
    """What ``tools/convert_checkpoint.py import`` asks for; its fields are the command's flags."""

    hf: str
    """Hugging Face Qwen3 directory (config.json and safetensors, one file or sharded with an index)."""
    save: str
    """checkpoint directory to write (pretrain --load reads it)."""
    dtype: Optional[str] = field(default=None, metadata=flag(choices=tuple(hf_config.DTYPES)))
    """dtype of the checkpoint (default: config.json's dtype, else the weights')."""
    tensor_model_parallel_size: int = 1
    """TP the checkpoint will be loaded at: checked against the model now (it loads at any TP the model allows)."""
    pipeline_model_parallel_size: int = 1
    """PP the checkpoint will be loaded at: checked against the model now."""
    overwrite: bool = False
    """write into a directory that already holds checkpoints (its latest then points at this one)."""
    dry_run: bool = False
    """check everything and print the tensor mapping with shapes; write nothing."""
    progress: bool = True
    """show a progress bar over tensors."""

    def check(self) -> None:
        """Refuses flags that cannot work, naming the flag; reads no weights (``plan_import`` does)."""
        check_dir("--hf", self.hf, ("config.json",), " (a Hugging Face model directory: config.json and safetensors)")
        check_output_dir("--save", self.save)
        check_at_least("--tensor-model-parallel-size", self.tensor_model_parallel_size, 1)
        check_at_least("--pipeline-model-parallel-size", self.pipeline_model_parallel_size, 1)


@dataclass
class ImportPlan:
    """Everything checked; what would be written."""

    shape: ModelShape
    record: Record
    dtype: torch.dtype
    tensors: HFTensors
    items: List[Tuple[TensorMap, Optional[int]]]

    def mapping_lines(self) -> List[str]:
        """``megatron-name shape <- HF-name shape`` for every tensor."""
        shape = self.shape
        lines = [
            f"{self.tensors.directory}: {shape.num_layers} layers, vocabulary {shape.vocab_size} "
            f"(checkpoint rows {shape.padded_vocab_size()}), tied={shape.tie_embeddings}, "
            f"dtype {hf_config.dtype_name(self.dtype)}, recorded as "
            + (f"preset {self.record!r}" if isinstance(self.record, str) else "a shape (no preset matches)")
        ]
        for tensor, layer in self.items:
            sources = ", ".join(f"{name} {self.tensors.shapes[name]}" for name in tensor.hf_names(layer))
            lines.append(f"{tensor.describe(layer)} {megatron_shape(tensor, shape)} <- {sources}")
        return lines


def plan_import(config: ImportConfig) -> ImportPlan:
    """Reads config.json and the safetensors headers and checks them; builds and writes nothing."""
    from megatron_soda.training.checkpointing import checkpoint_dir, latest_iteration
    from megatron_soda.training.parallel import ParallelLayout

    shape, config_dtype = hf_config.shape_from_hf_config(config.hf)
    tp, pp = config.tensor_model_parallel_size, config.pipeline_model_parallel_size
    ParallelLayout(tp, pp).check(tp * pp, shape.num_layers, shape.num_attention_heads, shape.num_query_groups)
    latest = latest_iteration(config.save) if Path(config.save).is_dir() else None
    if not config.overwrite and (latest is not None or checkpoint_dir(config.save, 0).exists()):
        raise ConversionError(
            f"{config.save} already holds checkpoints (latest: {latest}); importing there would "
            f"change what --load resumes: choose a new directory or pass --overwrite"
        )
    tensors = HFTensors(config.hf)
    items = ordered_items(shape)
    _check_tensors(tensors, shape, items)
    if (
        shape.tie_embeddings
        and LM_HEAD in tensors.shapes
        and not torch.equal(tensors.get(LM_HEAD), tensors.get(EMBEDDING))
    ):
        raise ConversionError(
            f"{tensors.path(LM_HEAD)}: config.json says tie_word_embeddings=true, but "
            f"{LM_HEAD} differs from {EMBEDDING}: the weights are not a tied model's"
        )
    dtype = hf_config.parse_dtype(config.dtype) if config.dtype else config_dtype or _weights_dtype(tensors)
    return ImportPlan(shape, record_for(shape), dtype, tensors, items)


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _weights_dtype(tensors: HFTensors) -> torch.dtype:
    name = tensors.dtypes[EMBEDDING]
    if name not in _SAFETENSORS_DTYPES:
        raise ConversionError(f"{tensors.path(EMBEDDING)}: {EMBEDDING} is {name}; pass --dtype bf16 or fp32")
    return _SAFETENSORS_DTYPES[name]


def _check_tensors(tensors: HFTensors, shape: ModelShape, items: List[Tuple[TensorMap, Optional[int]]]) -> None:
    """Every tensor config.json implies, each of its shape, and nothing else; else one error naming them."""
    expected: Dict[str, Tuple[int, ...]] = {}
    for tensor, layer in items:
        expected.update(hf_shapes(tensor, shape, layer))
    if shape.tie_embeddings and LM_HEAD in tensors.shapes:
        expected[LM_HEAD] = expected[EMBEDDING]  # allowed, if equal to the embedding (checked by plan_import)
    problems = []
    missing = [name for name in expected if name not in tensors.shapes]
    unknown = sorted(set(tensors.shapes) - set(expected))
    if missing:
        hint = " (config.json says tie_word_embeddings=false)" if missing == [LM_HEAD] else ""
        problems.append(f"missing tensors{hint}: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if unknown:
        problems.append(
            f"tensors a Qwen3 model of this config does not have: {', '.join(unknown[:8])}"
            + (" ..." if len(unknown) > 8 else "")
        )
    for name, wanted in expected.items():
        found = tensors.shapes.get(name)
        if found is not None and found != wanted:
            problems.append(f"{tensors.path(name)}: tensor {name} has shape {found}, but config.json implies {wanted}")
    if problems:
        raise ConversionError(f"{tensors.directory} does not match its config.json: " + "; ".join(problems))


def import_checkpoint(config: ImportConfig) -> ImportPlan:
    """Plans (``plan_import``) and, unless ``config.dry_run``, writes the checkpoint."""
    plan = plan_import(config)
    if not config.dry_run:
        write_import(plan, config)
    return plan


def write_import(plan: ImportPlan, config: ImportConfig) -> Path:
    from tqdm import tqdm

    from megatron_soda.convert.solo import one_process_group
    from megatron_soda.models.gpt import build_gpt_model, transformer_config
    from megatron_soda.training.checkpointing import save_checkpoint

    shape, tensors = plan.shape, plan.tensors
    with one_process_group(megatron_parallel=True):
        model_config = transformer_config(shape, params_dtype=plan.dtype)
        model_config.use_cpu_initialization = True
        model_config.perform_initialization = False  # every parameter is overwritten below
        model = build_gpt_model(shape, model_config, attention_backend="sdpa")
        parameters = _parameters_by_checkpoint_key(model)
        wanted = {(tensor.megatron, layer) for tensor, layer in plan.items}
        if set(parameters) != wanted:
            raise ConversionError(
                "megatron-core's model and the name map disagree (a megatron-core version with other checkpoint "
                f"names?): model only {sorted(set(parameters) - wanted)[:4]}, "
                f"map only {sorted(wanted - set(parameters))[:4]}"
            )
        with torch.no_grad():
            for tensor, layer in tqdm(
                plan.items, unit="tensor", desc=f"import {tensors.directory.name}", disable=not config.progress
            ):
                value = to_megatron(tensor, [tensors.get(name) for name in tensor.hf_names(layer)], shape)
                parameter = parameters[(tensor.megatron, layer)]
                if parameter.shape != value.shape:
                    raise ConversionError(
                        f"megatron-core built {tensor.describe(layer)} with shape {tuple(parameter.shape)}, "
                        f"the name map gives {tuple(value.shape)}"
                    )
                parameter.copy_(value)
        extra = {
            "model": plan.record,
            "vocab_size": shape.vocab_size,
            "padded_vocab_size": shape.padded_vocab_size(),
            "imported_from": str(Path(config.hf).resolve()),
        }
        return save_checkpoint(
            config.save, 0, [model], None, scheduler_state={}, consumed_samples=0, extra=extra, model_only=True
        )


def _parameters_by_checkpoint_key(model) -> Dict[Tuple[str, Optional[int]], torch.nn.Parameter]:
    """Each parameter under (checkpoint key, layer): the key megatron's ``sharded_state_dict`` gives it."""
    sharded = model.sharded_state_dict(prefix="")
    out = {}
    for name, parameter in model.named_parameters():
        key = sharded[name].key
        layer = int(re.match(r"decoder\.layers\.(\d+)\.", name).group(1)) if key.startswith(LAYERS) else None
        out[(key, layer)] = parameter
    return out
