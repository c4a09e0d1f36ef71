"""Transformer layers drawn from their own random stream, so a fresh model is the same at every layout.

Each pipeline stage builds only its own layers, all from the one seed every rank starts with: with
megatron-core's plain ``TransformerLayer`` the second stage's first layer gets the weights the first
stage's first layer got, and a fresh model at PP=2 is another model than at PP=1. ``SeededTransformerLayer``
reseeds the random number generators from the run's seed and its global layer number before it is built,
so layer i has the same weights whichever stage, virtual chunk or pipeline size builds it. The embedding
(built first, on the first stage) and an untied output layer (built right after the last layer, on the
last stage) then also draw the same numbers at every layout. Tensor parallelism changes nothing on a CPU,
where megatron-core draws every weight whole and hands each rank its shard (``use_cpu_initialization``);
on a GPU each tensor-parallel rank draws its shard from a stream of its own, so there only the pipeline
layout is free unless --use-cpu-initialization draws as on a CPU (docs/design.md, "Layout-independent
numerics").
"""

from __future__ import annotations

import hashlib

import torch
from megatron.core.transformer.transformer_layer import TransformerLayer, get_transformer_layer_offset

from megatron_soda.device import device_info


def layer_seed(seed: int, layer_number: int) -> int:
    """A 63-bit seed for layer ``layer_number`` (1-based, global) of a run seeded ``seed``."""
    digest = hashlib.sha256(f"megatron-soda layer {seed} {layer_number}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def reseed(seed: int) -> None:
    """Seeds torch's generators, and on a GPU megatron-core's model-parallel streams, with ``seed``."""
    torch.manual_seed(seed)
    if device_info().cuda:
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)


class SeededTransformerLayer(TransformerLayer):
    """megatron-core's ``TransformerLayer``, its parameters drawn after reseeding with ``layer_seed``."""

    def __init__(self, config, *args, init_seed: int, layer_number: int = 1, **kwargs):
        # megatron-core passes the stage's own number; the layer adds its stage's offset, as here
        offset = (
            get_transformer_layer_offset(config, kwargs.get("vp_stage")) if kwargs.get("add_layer_offset", True) else 0
        )
        reseed(layer_seed(init_seed, layer_number + offset))
        super().__init__(config, *args, layer_number=layer_number, **kwargs)
