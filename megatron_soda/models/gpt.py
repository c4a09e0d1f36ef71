"""Qwen3-architecture models as megatron-core GPTModels: the one place that calls its model API.

RMSNorm, SwiGLU, GQA, QK-norm, no biases, Llama-3-style RoPE (all four of its settings, see
``apply_rope_scaling``), tied or untied embeddings, all from a ``ModelShape``. Layers come from a
``ModuleSpec``: Transformer Engine's linear layers and norms when it is installed, megatron-core's
local modules otherwise; core attention as ``--attention-backend`` says (``ATTENTION_BACKENDS``).
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer

from megatron_soda import optional
from megatron_soda.device import device_info
from megatron_soda.models.attention import FlashAttention, FlexAttention, SDPAttention
from megatron_soda.models.presets import ModelShape, RopeScaling
from megatron_soda.models.seeded_layer import SeededTransformerLayer

ATTENTION_BACKENDS = {
    "auto": "the fastest this build has: te with Transformer Engine, else flash with flash-attn on CUDA, else sdpa",
    "te": "Transformer Engine's DotProductAttention, which picks its own kernel (THD for packed rows)",
    "fused": "Transformer Engine, cuDNN fused attention only (Megatron-LM's meaning)",
    "unfused": "Transformer Engine, unfused attention only (Megatron-LM's meaning)",
    "local": "megatron-core's local DotProductAttention (CUDA only, no packed rows)",
    "flash": "flash-attn 2 called directly (varlen kernel for packed rows)",
    "sdpa": "torch scaled_dot_product_attention: flash/cuDNN kernels on GPU, math on CPU",
    "flex": "torch flex_attention with a document block mask, compiled on GPU (forward only on CPU)",
}
"""``--attention-backend`` values: Megatron-LM's (auto, flash, fused, unfused, local) and ours (te, sdpa,
flex). ``flash`` here is the flash-attn package itself, where Megatron-LM routes it through TE."""

_TE_BACKENDS = {"te": AttnBackend.auto, "fused": AttnBackend.fused, "unfused": AttnBackend.unfused}
_OUR_CORE_ATTENTION = {"sdpa": SDPAttention, "flex": FlexAttention, "flash": FlashAttention}


def _runnable(name: str) -> bool:
    if name in _TE_BACKENDS:
        return optional.available("transformer_engine")
    if name == "flash":
        return device_info().cuda and optional.available("flash_attn")
    if name == "local":
        return device_info().cuda
    return True


def available_attention_backends() -> List[str]:
    """The ``--attention-backend`` values this build can run (installed packages, CUDA or not)."""
    return [name for name in ATTENTION_BACKENDS if _runnable(name)]


_HALF = (torch.bfloat16, torch.float16)


def resolve_attention_backend(name: str, params_dtype: torch.dtype = torch.float32) -> str:
    """The backend ``name`` stands for here (``auto`` -> a concrete one); a clear error when it cannot run.

    flash-attn has only half-precision kernels, so ``auto`` picks it for bf16/fp16 models alone.
    """
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"--attention-backend {name!r}: choose one of {', '.join(ATTENTION_BACKENDS)}")
    if name == "auto":
        return next(b for b in ("te", "flash", "sdpa") if _runnable(b) and (b != "flash" or params_dtype in _HALF))
    if name in _TE_BACKENDS:
        optional.require("transformer_engine", f"--attention-backend {name}")
    elif name == "flash":
        optional.require("flash_attn", "--attention-backend flash")
        if not device_info().cuda:
            raise ValueError("--attention-backend flash needs a CUDA device; use sdpa on CPU")
        if params_dtype not in _HALF:
            raise ValueError("--attention-backend flash needs --bf16: flash-attn has no fp32 kernels")
    elif name == "local" and not device_info().cuda:
        raise ValueError(
            "--attention-backend local is megatron-core's own attention, which builds its mask on CUDA; use sdpa on CPU"
        )
    return name


def layer_spec(
    attention_backend: str = "auto", params_dtype: torch.dtype = torch.float32, init_seed: Optional[int] = None
) -> ModuleSpec:
    """The transformer layer for a backend.

    Linear layers and norms are Transformer Engine's whenever it is installed (FP8 needs them), and
    megatron-core's local modules otherwise; core attention is TE's for te/fused/unfused, megatron's
    own for local, ours (attention.py) for sdpa/flex/flash. With ``init_seed`` each layer draws its
    weights from a stream of its own (``seeded_layer``): the same fresh model at every pipeline layout.
    """
    backend = resolve_attention_backend(attention_backend, params_dtype)
    if backend != "local" and optional.available("transformer_engine"):
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    else:
        spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    if backend in _OUR_CORE_ATTENTION:
        spec.submodules.self_attention.submodules.core_attention = _OUR_CORE_ATTENTION[backend]
    if init_seed is not None:
        if spec.module is not TransformerLayer:
            raise ValueError(f"cannot seed layers of {spec.module.__name__}: expected megatron-core's TransformerLayer")
        spec = dataclasses.replace(spec, module=SeededTransformerLayer, params={**spec.params, "init_seed": init_seed})
    return spec


FP8_RECIPES = ("delayed", "tensorwise", "mxfp8", "blockwise")


def check_fp8(fp8_format: Optional[str], fp8_recipe: str, attention_backend: str) -> None:
    """Refuses FP8 settings that cannot run here, naming the flag (FP8 needs TE's linear layers)."""
    if fp8_format is None:
        return
    if fp8_format not in ("e4m3", "hybrid"):
        raise ValueError(f"--fp8-format {fp8_format!r}: choose e4m3 or hybrid")
    if fp8_recipe not in FP8_RECIPES:
        raise ValueError(f"--fp8-recipe {fp8_recipe!r}: choose one of {', '.join(FP8_RECIPES)}")
    optional.require("transformer_engine", f"--fp8-format {fp8_format}")
    if attention_backend == "local":
        raise ValueError(
            "--fp8-format needs Transformer Engine layers; --attention-backend local uses megatron's local ones"
        )


def transformer_config(
    shape: ModelShape,
    *,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    virtual_pipeline_parallel: Optional[int] = None,
    sequence_parallel: bool = False,
    params_dtype: torch.dtype = torch.float32,
    init_method_std: float = 0.02,
    attention_backend: str = "auto",
    fp8_format: Optional[str] = None,
    fp8_recipe: str = "delayed",
    recompute_granularity: Optional[str] = None,
    recompute_method: Optional[str] = None,
    recompute_num_layers: Optional[int] = None,
    use_cpu_initialization: bool = False,
) -> TransformerConfig:
    """megatron-core's config for ``shape``; fusions that need CUDA kernels stay off without CUDA.

    Weights are drawn on the CPU without CUDA, and on a GPU with ``use_cpu_initialization``: megatron-core
    then draws each weight whole and gives every tensor-parallel rank its shard, so a fresh model does
    not depend on TP (the caller moves the built model to the GPU).

    ``fp8_format`` (e4m3 | hybrid) turns on FP8 through Transformer Engine's ``fp8_recipe``; megatron-core
    then runs every layer under TE's FP8 autocast. It needs TE's linear layers, so not ``local``.
    ``recompute_*`` are megatron-core's activation recomputation settings (Megatron-LM's flags).

    ``calculate_per_token_loss`` is always on: the loss is the global batch's per-token mean
    (``training/step.py``); DDP reads it when built from this config (it then sums gradients over
    data-parallel ranks and ``finalize_model_grads`` divides by the global batch's loss tokens).
    """
    cuda = device_info().cuda
    backend = resolve_attention_backend(attention_backend, params_dtype)
    check_fp8(fp8_format, fp8_recipe, backend)
    return TransformerConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_query_groups,
        kv_channels=shape.kv_channels,
        ffn_hidden_size=shape.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=shape.norm_epsilon,
        qk_layernorm=shape.qk_layernorm,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=init_method_std,
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        virtual_pipeline_model_parallel_size=virtual_pipeline_parallel,
        sequence_parallel=sequence_parallel,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=use_cpu_initialization or not cuda,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        calculate_per_token_loss=True,
        attention_backend=_TE_BACKENDS.get(backend, AttnBackend.local if backend == "local" else AttnBackend.auto),
        recompute_granularity=recompute_granularity,
        recompute_method=recompute_method,
        recompute_num_layers=recompute_num_layers,
        **({"fp8": fp8_format, "fp8_recipe": fp8_recipe} if fp8_format is not None else {}),
    )


def check_rope_scaling(rope: RopeScaling) -> None:
    """Refuses Llama-3 scaling settings whose frequency formula is undefined or meaningless."""
    if not (rope.factor > 0 and 0 < rope.low_freq_factor < rope.high_freq_factor and rope.original_max_position > 0):
        raise ValueError(
            f"Llama-3 RoPE scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position "
            f"> 0; got factor={rope.factor}, low_freq_factor={rope.low_freq_factor}, high_freq_factor="
            f"{rope.high_freq_factor}, original_max_position={rope.original_max_position}"
        )


def apply_rope_scaling(model: GPTModel, shape: ModelShape) -> None:
    """Gives ``model``'s rotary embedding all four Llama-3 scaling settings of ``shape.rope_scaling``.

    megatron-core's ``GPTModel`` (0.16, and unchanged up to 0.20) accepts only ``rope_scaling`` and
    ``rope_scaling_factor``, and its ``RotaryEmbedding`` calls ``_apply_scaling(inv_freq, factor=...)``,
    so low_freq_factor 1, high_freq_factor 4 and original context 8192 (that method's defaults) would
    stand in for the shape's own. ``_apply_scaling`` itself takes all four, so right after construction
    (before any forward: the embedding's ``forward`` caches its output per sequence length) ``inv_freq``
    is recomputed here from megatron's own unscaled formula (``1 / base ** (arange(0, dim, 2) / dim)``,
    float32, on the same device) and megatron's ``_apply_scaling`` with the shape's four values. For the
    default settings this reproduces megatron's frequencies bit for bit. ``inv_freq`` is a plain attribute,
    not a buffer: checkpoints do not hold it, so every model built here computes it the same way.
    """
    rope = shape.rope_scaling
    rotary = getattr(model, "rotary_pos_emb", None)
    if rope is None or rotary is None:
        return
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    if type(rotary) is not RotaryEmbedding or not hasattr(rotary, "_apply_scaling"):
        raise ValueError(
            f"cannot apply Llama-3 RoPE scaling {rope} to megatron-core's {type(rotary).__name__}: "
            "expected its plain RotaryEmbedding with _apply_scaling"
        )
    dim = shape.kv_channels  # GPTModel's rotary_percent is 1.0: the whole head rotates
    if rotary.inv_freq.numel() != (dim + 1) // 2:
        raise ValueError(
            f"megatron-core's rotary embedding has {rotary.inv_freq.numel()} frequencies, expected "
            f"{(dim + 1) // 2} for head dimension {dim}"
        )
    exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=rotary.inv_freq.device) / dim
    base = 1.0 / (shape.rotary_base**exponents)
    rotary.inv_freq = rotary._apply_scaling(
        base,
        factor=rope.factor,
        low_freq_factor=rope.low_freq_factor,
        high_freq_factor=rope.high_freq_factor,
        original_max_position_embeddings=rope.original_max_position,
    )


def build_gpt_model(
    shape: ModelShape,
    config: TransformerConfig,
    *,
    attention_backend: str = "auto",
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: Optional[int] = None,
    init_seed: Optional[int] = None,
) -> GPTModel:
    """One pipeline stage (or the whole model) of ``shape`` with the padded vocabulary; ``init_seed``: layers
    seeded by their global number (``layer_spec``), as training builds them.

    RoPE scaling reaches megatron in full: the factor through ``GPTModel``, the other three settings
    through ``apply_rope_scaling`` right after construction.
    """
    rope = shape.rope_scaling
    if rope is not None:
        check_rope_scaling(rope)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(attention_backend, config.params_dtype, init_seed),
        vocab_size=shape.padded_vocab_size(),
        max_sequence_length=shape.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=shape.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=shape.rotary_base,
        rope_scaling=rope is not None,
        rope_scaling_factor=rope.factor if rope is not None else 8.0,
        **({"vp_stage": vp_stage} if vp_stage is not None else {}),
    )
    apply_rope_scaling(model, shape)
    return model
