"""The one map between megatron-core checkpoint tensors and Hugging Face ``Qwen3ForCausalLM`` tensors.

Checkpoint names are megatron's Transformer Engine spec names (docs/design.md): the local spec maps its own
names onto them, so a dist checkpoint carries them whichever spec saved it. Layer tensors are stacked:
one checkpoint key ``decoder.layers.<name>`` of global shape ``[num_layers, ...]`` holds every layer,
whatever the pipeline split. Global tensors do not depend on TP either (megatron stores each rank's
shard at its offset), so the map below is all a converter needs. Four kinds of conversion:

- ``copy``: the same tensor.
- ``qkv``: megatron interleaves per query group: for each of the ``ng`` groups, its ``nh / ng`` query
  heads, then its key head, then its value head (``hd`` rows each); HF keeps q, k and v apart.
- ``fc1``: megatron's SwiGLU input projection is ``[gate; up]`` (per TP rank ``[gate_shard; up_shard]``,
  which megatron's checkpoint factory places so that the global tensor is ``[gate; up]``).
- ``vocab``: megatron's embedding and output layer have ``padded_vocab_size()`` rows, HF the real
  vocabulary: export drops the padding rows, import adds them as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from megatron_soda.models.presets import ModelShape

LAYERS = "decoder.layers."
"""Prefix of the checkpoint keys stacked over layers (first axis = layer)."""


class ConversionError(ValueError):
    """A checkpoint, a Hugging Face directory or a config that cannot be converted; the message says why."""


@dataclass(frozen=True)
class TensorMap:
    """One checkpoint tensor and the Hugging Face tensor(s) it becomes."""

    megatron: str
    """Checkpoint key (TE-spec name); a per-layer slice when it starts with ``decoder.layers.``."""
    hf: Tuple[str, ...]
    """Hugging Face names, ``{layer}`` standing for the layer index."""
    kind: str
    """``copy``, ``qkv``, ``fc1`` or ``vocab`` (module docstring)."""

    @property
    def layered(self) -> bool:
        return self.megatron.startswith(LAYERS)

    def hf_names(self, layer: Optional[int] = None) -> List[str]:
        return [name.format(layer=layer) for name in self.hf]

    def describe(self, layer: Optional[int] = None) -> str:
        """The checkpoint side as a reader finds it: ``decoder.layers.mlp.linear_fc1.weight[3]``."""
        return f"{self.megatron}[{layer}]" if self.layered else self.megatron


_LAYER = "model.layers.{layer}."
_MAPS = (
    TensorMap("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab"),
    TensorMap(
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight", (_LAYER + "input_layernorm.weight",), "copy"
    ),
    TensorMap(
        "decoder.layers.self_attention.linear_qkv.weight",
        tuple(_LAYER + f"self_attn.{p}_proj.weight" for p in "qkv"),
        "qkv",
    ),
    TensorMap("decoder.layers.self_attention.q_layernorm.weight", (_LAYER + "self_attn.q_norm.weight",), "copy"),
    TensorMap("decoder.layers.self_attention.k_layernorm.weight", (_LAYER + "self_attn.k_norm.weight",), "copy"),
    TensorMap("decoder.layers.self_attention.linear_proj.weight", (_LAYER + "self_attn.o_proj.weight",), "copy"),
    TensorMap("decoder.layers.mlp.linear_fc1.layer_norm_weight", (_LAYER + "post_attention_layernorm.weight",), "copy"),
    TensorMap(
        "decoder.layers.mlp.linear_fc1.weight", (_LAYER + "mlp.gate_proj.weight", _LAYER + "mlp.up_proj.weight"), "fc1"
    ),
    TensorMap("decoder.layers.mlp.linear_fc2.weight", (_LAYER + "mlp.down_proj.weight",), "copy"),
    TensorMap("decoder.final_layernorm.weight", ("model.norm.weight",), "copy"),
)
_OUTPUT = TensorMap("output_layer.weight", ("lm_head.weight",), "vocab")
LM_HEAD = "lm_head.weight"
"""The LM head; absent from a tied model's files (transformers' convention), or equal to the embedding there."""


def tensor_maps(shape: ModelShape) -> List[TensorMap]:
    """Every checkpoint tensor of ``shape``: embedding, the layer stacks, final norm, and the LM head when untied."""
    return list(_MAPS) + ([] if shape.tie_embeddings else [_OUTPUT])


def ordered_items(shape: ModelShape) -> List[Tuple[TensorMap, Optional[int]]]:
    """(tensor, layer) pairs in Hugging Face file order: embedding, layer by layer, final norm, LM head."""
    maps = tensor_maps(shape)
    embedding, rest = maps[:1], [m for m in maps[1:] if not m.layered]
    layers = [(m, layer) for layer in range(shape.num_layers) for m in maps if m.layered]
    return [(m, None) for m in embedding] + layers + [(m, None) for m in rest]


def megatron_shape(tensor: TensorMap, shape: ModelShape) -> Tuple[int, ...]:
    """The checkpoint tensor's shape (one layer's slice for a layer stack)."""
    return _megatron_shapes(shape)[tensor.megatron]


def checkpoint_shape(tensor: TensorMap, shape: ModelShape) -> Tuple[int, ...]:
    """The global shape stored in a dist checkpoint (layer stacks with their leading layer axis)."""
    one = megatron_shape(tensor, shape)
    return (shape.num_layers, *one) if tensor.layered else one


def hf_shapes(tensor: TensorMap, shape: ModelShape, layer: Optional[int] = None) -> Dict[str, Tuple[int, ...]]:
    """The Hugging Face tensors' names and shapes for one checkpoint tensor (one layer of a stack)."""
    h, hd, ffn = shape.hidden_size, shape.kv_channels, shape.ffn_hidden_size
    names = tensor.hf_names(layer)
    if tensor.kind == "qkv":
        shapes = [
            (shape.num_attention_heads * hd, h),
            (shape.num_query_groups * hd, h),
            (shape.num_query_groups * hd, h),
        ]
    elif tensor.kind == "fc1":
        shapes = [(ffn, h), (ffn, h)]
    elif tensor.kind == "vocab":
        shapes = [(shape.vocab_size, h)]
    else:
        shapes = [megatron_shape(tensor, shape)]
    return dict(zip(names, shapes))


def _megatron_shapes(shape: ModelShape) -> Dict[str, Tuple[int, ...]]:
    h, hd, ffn = shape.hidden_size, shape.kv_channels, shape.ffn_hidden_size
    q_dim, kv_dim = shape.num_attention_heads * hd, shape.num_query_groups * hd
    rows = shape.padded_vocab_size()
    return {
        "embedding.word_embeddings.weight": (rows, h),
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight": (h,),
        "decoder.layers.self_attention.linear_qkv.weight": (q_dim + 2 * kv_dim, h),
        "decoder.layers.self_attention.q_layernorm.weight": (hd,),
        "decoder.layers.self_attention.k_layernorm.weight": (hd,),
        "decoder.layers.self_attention.linear_proj.weight": (h, q_dim),
        "decoder.layers.mlp.linear_fc1.layer_norm_weight": (h,),
        "decoder.layers.mlp.linear_fc1.weight": (2 * ffn, h),
        "decoder.layers.mlp.linear_fc2.weight": (h, ffn),
        "decoder.final_layernorm.weight": (h,),
        "output_layer.weight": (rows, h),
    }


def to_hf(
    tensor: TensorMap, value: torch.Tensor, shape: ModelShape, layer: Optional[int] = None
) -> Dict[str, torch.Tensor]:
    """One checkpoint tensor (one layer's slice of a stack) as its Hugging Face tensors (contiguous)."""
    names = tensor.hf_names(layer)
    if tensor.kind == "qkv":
        groups, per_group = shape.num_query_groups, shape.num_attention_heads // shape.num_query_groups
        grouped = value.reshape(groups, per_group + 2, shape.kv_channels, shape.hidden_size)
        parts = [grouped[:, :per_group], grouped[:, per_group], grouped[:, per_group + 1]]
        values = [part.reshape(-1, shape.hidden_size) for part in parts]
    elif tensor.kind == "fc1":
        values = list(value.chunk(2, dim=0))
    elif tensor.kind == "vocab":
        values = [value[: shape.vocab_size]]
    else:
        values = [value]
    return {name: v.contiguous() for name, v in zip(names, values)}


def to_megatron(tensor: TensorMap, values: Sequence[torch.Tensor], shape: ModelShape) -> torch.Tensor:
    """The checkpoint tensor (one layer's slice of a stack) from its Hugging Face tensors, in ``hf`` order."""
    if tensor.kind == "qkv":
        groups, per_group = shape.num_query_groups, shape.num_attention_heads // shape.num_query_groups
        hd, h = shape.kv_channels, shape.hidden_size
        q, k, v = values
        grouped = torch.cat(
            [q.reshape(groups, per_group, hd, h), k.reshape(groups, 1, hd, h), v.reshape(groups, 1, hd, h)], dim=1
        )
        return grouped.reshape(-1, h)
    if tensor.kind == "fc1":
        return torch.cat(list(values), dim=0)
    if tensor.kind == "vocab":
        (value,) = values
        padding = value.new_zeros(shape.padded_vocab_size() - value.shape[0], value.shape[1])
        return torch.cat([value, padding], dim=0)
    (value,) = values
    return value
