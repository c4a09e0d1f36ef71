"""ModelShape <-> Hugging Face Qwen3 ``config.json``, and which shapes both sides can hold.

Written configs carry both spellings transformers has used, with the same values, so that 5.x
(``rope_parameters`` holding ``rope_theta`` and ``rope_type``; ``dtype``) and 4.x (``rope_theta`` and
``rope_scaling``; ``torch_dtype``) build the same model. The RMSNorm epsilon is always written:
SODA's is 1e-5, transformers' Qwen3 default 1e-6.

RoPE: Llama-3 frequency scaling converts with all four settings (factor, low/high-frequency factors,
original context); ``models/gpt.py`` gives megatron-core's rotary embedding every one of them.
transformers (4 and 5) warns on every load of a config whose ``original_max_position_embeddings`` is not
below ``max_position_embeddings`` (SODA's 8192 > 4096). Llama-3 scaling depends on the original context
and the two frequency factors only through their ratios (the band edges ``original / low_freq_factor``,
``original / high_freq_factor`` and the smoothing ``(original / wavelength - low) / (high - low)``), so the
export writes the three divided by the same power of two (8192, 1, 4 -> 2048, 0.25, 1): bit-identical
frequencies, since halving is exact in floating point, and no warning (``transformers_rope_scaling``).
The trained values are kept beside them under ``TRAINED_ROPE_KEY``, which transformers ignores and the
import reads back, so a round trip gives the same shape (and preset) again.
"""

from __future__ import annotations

import json
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from megatron_soda.convert.names import ConversionError
from megatron_soda.models.presets import ModelShape, RopeScaling

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
"""``--dtype`` values and config.json dtype names."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (config.json's spelling)."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConversionError(f"--dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_convertible(shape: ModelShape, where: str) -> None:
    """Refuses a shape that megatron_soda's model and HF's ``Qwen3ForCausalLM`` would not both compute."""
    problems = []
    if shape.bias:
        problems.append("projection biases (megatron_soda builds none)")
    if not shape.swiglu:
        problems.append("a plain MLP (Qwen3's is SwiGLU)")
    if not shape.qk_layernorm:
        problems.append("no q/k norms (Qwen3 has them)")
    if shape.rope_scaling is not None:
        from megatron_soda.models.gpt import check_rope_scaling

        try:
            check_rope_scaling(shape.rope_scaling)
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ConversionError(f"{where}: cannot convert this model: it has {'; '.join(problems)}")


TRAINED_ROPE_KEY = "megatron_soda_rope_scaling"
"""config.json key holding the Llama-3 settings the model was trained with, written when the transformers
fields carry an equivalent rewrite of them (``transformers_rope_scaling``)."""


def same_frequencies(a: RopeScaling, b: RopeScaling) -> bool:
    """Whether two Llama-3 settings give the same frequencies at every head dimension and theta: equal factor
    and equal band edges ``original / low_freq_factor``, ``original / high_freq_factor`` (exactly)."""
    return (
        a.factor == b.factor
        and Fraction(a.original_max_position) / Fraction(a.low_freq_factor)
        == Fraction(b.original_max_position) / Fraction(b.low_freq_factor)
        and Fraction(a.original_max_position) / Fraction(a.high_freq_factor)
        == Fraction(b.original_max_position) / Fraction(b.high_freq_factor)
    )


def transformers_rope_scaling(rope: RopeScaling, max_position_embeddings: int) -> RopeScaling:
    """``rope`` as transformers accepts it without a warning: ``original_max_position`` below
    ``max_position_embeddings``. When it is not, the original context and both frequency factors are divided
    by the smallest power of two that brings it below; every quantity transformers' (and megatron-core's)
    Llama-3 formula computes from them is then the same float, so the frequencies are bit-identical. Returned
    unchanged if already accepted, or if no power of two divides the original context far enough (then
    transformers warns; nothing else changes)."""
    original, divisor = rope.original_max_position, 1
    while original // divisor >= max_position_embeddings and original % (2 * divisor) == 0:
        divisor *= 2
    if original // divisor >= max_position_embeddings:
        return rope
    return RopeScaling(
        factor=rope.factor,
        low_freq_factor=rope.low_freq_factor / divisor,
        high_freq_factor=rope.high_freq_factor / divisor,
        original_max_position=original // divisor,
    )


def _rope_fields(shape: ModelShape) -> Tuple[dict, Optional[dict], Optional[dict]]:
    """(``rope_parameters`` for transformers 5, ``rope_scaling`` for transformers 4, the trained settings if
    those two carry an equivalent rewrite of them, else None)."""
    rope = shape.rope_scaling
    if rope is None:
        return {"rope_type": "default", "rope_theta": shape.rotary_base}, None, None
    written = transformers_rope_scaling(rope, shape.max_position_embeddings)
    scaling = {"rope_type": "llama3", **_llama3_values(written)}
    trained = _llama3_values(rope) if written != rope else None
    return {**scaling, "rope_theta": shape.rotary_base}, scaling, trained


def _llama3_values(rope: RopeScaling) -> dict:
    return {
        "factor": rope.factor,
        "low_freq_factor": rope.low_freq_factor,
        "high_freq_factor": rope.high_freq_factor,
        "original_max_position_embeddings": rope.original_max_position,
    }


def hf_config(
    shape: ModelShape, dtype: torch.dtype, bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None
) -> dict:
    """config.json of ``Qwen3ForCausalLM`` for ``shape`` (the real, unpadded vocabulary)."""
    rope_parameters, rope_scaling, trained = _rope_fields(shape)
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.ffn_hidden_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_query_groups,
        "head_dim": shape.kv_channels,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": shape.norm_epsilon,
        "tie_word_embeddings": shape.tie_embeddings,
        "rope_parameters": rope_parameters,
        "rope_theta": shape.rotary_base,
        "rope_scaling": rope_scaling,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": shape.num_layers,
        "layer_types": ["full_attention"] * shape.num_layers,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": dtype_name(dtype),
        "torch_dtype": dtype_name(dtype),
        "transformers_version": _transformers_version(),
    }
    if trained is not None:
        config[TRAINED_ROPE_KEY] = trained
    return config


def generation_config(
    bos_token_id: Optional[int], eos_token_id: Optional[int], stop_token_ids: Optional[List[int]] = None
) -> dict:
    """generation_config.json: the special ids, and greedy decoding stated (transformers' default).

    ``eos_token_id`` is the list of ids ``generate`` stops at: ``eos_token_id`` (``<|end_of_text|>``) first,
    then ``stop_token_ids`` (SODA's segment ends). ``pad_token_id`` is ``eos_token_id``, as the exported
    tokenizer pads (the embedding has only the real vocabulary: no row to spare for a new pad token).
    Sampling settings belong to the task; ``do_sample=True`` and its knobs are arguments to ``generate``.
    """
    config = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id}
    if eos_token_id is not None:
        stops = [eos_token_id, *(i for i in stop_token_ids or () if i != eos_token_id)]
        config.update(eos_token_id=stops if len(stops) > 1 else eos_token_id, pad_token_id=eos_token_id)
    return {**config, "do_sample": False, "transformers_version": _transformers_version()}


def _transformers_version() -> str:
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "unknown"


def shape_from_hf_config(directory) -> Tuple[ModelShape, Optional[torch.dtype]]:
    """The shape a Hugging Face Qwen3 directory holds, and the dtype its config names (None if it names none).

    The config is read by transformers (its defaults apply to absent fields), in either version's spelling.
    """
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{directory} has no config.json: is it a Hugging Face model directory?")
    raw = json.loads(path.read_text())
    if raw.get("model_type") != "qwen3":
        raise ConversionError(f'{path}: model_type is {raw.get("model_type")!r}; only Qwen3 ("qwen3") converts')
    from transformers import Qwen3Config

    config = Qwen3Config.from_pretrained(str(directory), local_files_only=True)
    problems = []
    if config.hidden_act != "silu":
        problems.append(f"hidden_act {config.hidden_act!r} (megatron_soda's MLP is SwiGLU with SiLU)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("attention_bias/mlp_bias set (megatron_soda builds no biases)")
    if getattr(config, "use_sliding_window", False) or any(
        t != "full_attention" for t in (getattr(config, "layer_types", None) or [])
    ):
        problems.append("sliding-window layers (megatron_soda attends over the whole sequence)")
    if problems:
        raise ConversionError(f"{path}: cannot convert: {'; '.join(problems)}")
    heads = config.num_attention_heads
    theta, rope = _read_rope(config, path)
    rope = _trained_rope(raw, rope, path)
    try:
        shape = ModelShape(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            num_attention_heads=heads,
            num_query_groups=config.num_key_value_heads or heads,
            kv_channels=getattr(config, "head_dim", None) or config.hidden_size // heads,
            ffn_hidden_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            tie_embeddings=bool(config.tie_word_embeddings),
            norm_epsilon=float(config.rms_norm_eps),
            rotary_base=theta,
            rope_scaling=rope,
            max_position_embeddings=config.max_position_embeddings,
        )
    except ValueError as error:
        raise ConversionError(f"{path}: {error}") from None
    check_convertible(shape, str(path))
    name = raw.get("dtype") or raw.get("torch_dtype")
    return shape, (DTYPES[name] if name in DTYPES else None)


def _read_rope(config, path: Path) -> Tuple[float, Optional[RopeScaling]]:
    """(theta, Llama-3 scaling or None) from transformers 5's ``rope_parameters`` or 4's
    ``rope_theta``/``rope_scaling``."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        if not {"rope_type", "type", "rope_theta"} & set(params):
            raise ConversionError(f"{path}: per-layer-type RoPE parameters {sorted(params)} are not a Qwen3 model's")
        theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    else:
        params = getattr(config, "rope_scaling", None) or {}
        theta = getattr(config, "rope_theta", None)
    kind = params.get("rope_type", params.get("type", "default"))
    if theta is None:
        raise ConversionError(f"{path}: no rope_theta")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConversionError(
            f"{path}: partial_rotary_factor {params['partial_rotary_factor']} (megatron_soda rotates whole heads)"
        )
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise ConversionError(
            f"{path}: RoPE type {kind!r}; megatron_soda's models use plain or Llama-3 ('llama3') RoPE"
        )
    try:
        rope = RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position=int(params["original_max_position_embeddings"]),
        )
    except KeyError as missing:
        raise ConversionError(f"{path}: llama3 RoPE parameters lack {missing}") from None
    return float(theta), rope


def _trained_rope(raw: dict, rope: Optional[RopeScaling], path: Path) -> Optional[RopeScaling]:
    """The trained Llama-3 settings an export recorded under ``TRAINED_ROPE_KEY``, if they give the same
    frequencies as the ones transformers reads (else those: the config was edited after the export)."""
    trained = raw.get(TRAINED_ROPE_KEY)
    if rope is None or not isinstance(trained, dict):
        return rope
    try:
        recorded = RopeScaling(
            factor=float(trained["factor"]),
            low_freq_factor=float(trained["low_freq_factor"]),
            high_freq_factor=float(trained["high_freq_factor"]),
            original_max_position=int(trained["original_max_position_embeddings"]),
        )
    except (KeyError, TypeError, ValueError):
        raise ConversionError(f"{path}: {TRAINED_ROPE_KEY} is not a set of Llama-3 RoPE settings: {trained}") from None
    return recorded if same_frequencies(recorded, rope) else rope
