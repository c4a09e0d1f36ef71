"""Qwen3-architecture models as megatron-core GPTModels: the one place that calls its model API.

RMSNorm, SwiGLU, GQA, QK-norm, no biases, Llama-3-style RoPE, tied or untied embeddings, all from a
``ModelShape``. Layers come from a ``ModuleSpec``: Transformer Engine's when it is installed and
asked for, megatron-core's local modules otherwise, with core attention from ``attention.py``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_soda import optional
from megatron_soda.models.attention import SDPAttention
from megatron_soda.models.presets import ModelShape

ATTENTION_BACKENDS = ("auto", "te", "sdpa")


def layer_spec(attention_backend: str = "auto") -> ModuleSpec:
    """The transformer layer: TE modules for ``te`` (and ``auto`` when TE imports), else local + SDPA."""
    if attention_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"--attention-backend {attention_backend!r}: choose one of {', '.join(ATTENTION_BACKENDS)}")
    if attention_backend == "te" or (attention_backend == "auto" and optional.available("transformer_engine")):
        optional.require("transformer_engine", "--attention-backend te")
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


def transformer_config(
    shape: ModelShape,
    *,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    virtual_pipeline_parallel: Optional[int] = None,
    sequence_parallel: bool = False,
    params_dtype: torch.dtype = torch.float32,
    init_method_std: float = 0.02,
) -> TransformerConfig:
    """megatron-core's config for ``shape``; fusions that need CUDA kernels stay off without CUDA."""
    cuda = torch.cuda.is_available()
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
        use_cpu_initialization=not cuda,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
    )


def build_gpt_model(
    shape: ModelShape,
    config: TransformerConfig,
    *,
    attention_backend: str = "auto",
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: Optional[int] = None,
) -> GPTModel:
    """One pipeline stage (or the whole model) of ``shape`` with the padded vocabulary."""
    rope = shape.rope_scaling
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(attention_backend),
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
