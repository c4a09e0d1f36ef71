"""A trained model from our checkpoint, ready to generate: one process, TP=1, PP=1.

The checkpoint may have been saved at any TP/PP/VP layout: megatron's dist checkpointing reshards it
on load. The shape comes from the checkpoint's record (``extra["model"]``), checked against the
tokenizer's vocabulary. Call it inside ``convert.solo.one_process_group(megatron_parallel=True)``
(or any megatron world of one), which building a megatron model needs.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from megatron_soda.models.presets import ModelShape

GENERATION_BACKENDS = ("sdpa", "flex")
"""Attention backends that take the padding masks and KV-cache steps of generation."""


def load_megatron_model(
    load_dir,
    vocab_size: Optional[int],
    *,
    iteration: Optional[int] = None,
    attention_backend: str = "sdpa",
    params_dtype: torch.dtype = torch.float32,
) -> Tuple[torch.nn.Module, ModelShape, dict]:
    """``(model, shape, info)``: the checkpoint's model with its weights, in eval mode on this rank's
    device. ``info`` is ``read_checkpoint_info``'s (iteration, path, extra, ...)."""
    from megatron.core import parallel_state

    from megatron_soda.models.gpt import build_gpt_model, transformer_config
    from megatron_soda.models.shape_record import checkpoint_model_shape
    from megatron_soda.training.checkpointing import load_checkpoint, read_checkpoint_info

    if attention_backend not in GENERATION_BACKENDS:
        raise ValueError(
            f"--attention-backend {attention_backend}: generation runs {' or '.join(GENERATION_BACKENDS)} "
            "(left-padded batches need an attention mask)"
        )
    if parallel_state.get_tensor_model_parallel_world_size() != 1 or (
        parallel_state.get_pipeline_model_parallel_world_size() != 1
    ):
        raise ValueError("generation runs at TP=1, PP=1 (any checkpoint reshards to it on load)")
    info = read_checkpoint_info(load_dir, iteration)
    where = f"--load {info['path']}"
    shape = checkpoint_model_shape(info["extra"] or {}, vocab_size, where)
    config = transformer_config(shape, params_dtype=params_dtype, attention_backend=attention_backend)
    model = build_gpt_model(shape, config, attention_backend=attention_backend)
    load_checkpoint(load_dir, [model], None, iteration=iteration, load_optimizer=False, load_rng=False)
    return model.eval(), shape, info
