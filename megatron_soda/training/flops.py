"""FLOP counts: the one place that knows the formulas (MFU, scaling tools and the IsoFLOP grid ask here).

Two conventions, and every figure says which it uses:

- **Model FLOPs** (``forward_flops_per_token``, ``training_flops_per_token``, ``mfu``): the matmuls of
  a forward pass at 2*m*n*k FLOPs per ``[m, k] x [k, n]`` product, counted as Levanter's
  ``lm_flops_per_token`` does (the function SODA's IsoFLOP sweep budgets with): q/k/v/o projections,
  MLP, the LM head (unpadded vocabulary, also when tied), and the attention core -- scores QK^T and
  the weighted sum AV over the **full** seq x seq map (causal masking not halved, as Megatron-LM's
  and Levanter's counts assume) plus Levanter's 3 FLOPs per score for mask and softmax. Norms,
  RoPE, activations, residuals and the loss are not counted. Training = 3 x forward (backward
  costs two forwards: gradients with respect to activations and to weights); activation
  recomputation is *not* counted, so this is MFU, not hardware FLOPs utilisation.
  SODA's IsoFLOP budgets (1e18 .. 1e20) are *forward* FLOPs in this count; the paper quotes them x3.
- **6N** (``six_n_flops_per_token``): 6 x non-embedding parameters per trained token (Kaplan et al.
  2020), the "C = 6ND" of the paper's text. It leaves out attention-core and LM-head FLOPs and counts
  norm weights as if they were matmul weights.

With ``L`` layers, width ``h``, ``a`` query heads, ``g`` kv groups, head dim ``d``, FFN ``f``,
vocabulary ``V`` and sequence ``s``, forward FLOPs per token are
``L * [2h(a d + 2 g d) + 2 a d h + 2*3 h f + (4 s a d + 3 s a)] + 2 h V``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from megatron_soda.models.presets import ModelShape

PEAK_BF16_FLOPS: dict[str, float] = {
    "h100-sxm": 989e12,
    "h100-nvl": 835e12,
    "h100-pcie": 756e12,
    "h200": 989e12,
}
"""Dense bf16 tensor-core peak per GPU, as NVIDIA's datasheets list it (the headline 1,979 TFLOP/s is
with 2:4 sparsity). H200 has H100's compute with more and faster memory. Measured dense bf16 GEMM
throughput on these parts is nearer 700-800 TFLOP/s (~790 is a commonly reported best case), so an
MFU of 0.8 against 989e12 would be at the limit of what the chip delivers."""


def _per_layer_matmul_flops(shape: "ModelShape") -> int:
    h, d = shape.hidden_size, shape.kv_channels
    q_dim, kv_dim = shape.num_attention_heads * d, shape.num_query_groups * d
    qkv = 2 * h * (q_dim + 2 * kv_dim)
    out_proj = 2 * q_dim * h
    mlp = 2 * (3 if shape.swiglu else 2) * h * shape.ffn_hidden_size
    return qkv + out_proj + mlp


def attention_flops_per_token(shape: "ModelShape", seq_len: int) -> int:
    """Attention-core forward FLOPs per token, all layers: QK^T and AV over the full (non-causal-halved)
    map, 2*s*a*d each, plus 3*s*a for mask and softmax (Levanter's term)."""
    a, d = shape.num_attention_heads, shape.kv_channels
    return shape.num_layers * (4 * seq_len * a * d + 3 * seq_len * a)


def lm_head_flops_per_token(shape: "ModelShape") -> int:
    """Forward FLOPs of the output projection, unpadded vocabulary (padding rows are not model work)."""
    return 2 * shape.hidden_size * shape.vocab_size


def forward_flops_per_token(
    shape: "ModelShape", seq_len: int, include_attention: bool = True, include_lm_head: bool = True
) -> int:
    """Model FLOPs of one forward pass per token (Levanter's ``lm_flops_per_token`` with both flags on,
    using the real head dim where Levanter's older version assumed ``hidden / heads``)."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    flops = shape.num_layers * _per_layer_matmul_flops(shape)
    if include_attention:
        flops += attention_flops_per_token(shape, seq_len)
    if include_lm_head:
        flops += lm_head_flops_per_token(shape)
    return flops


def training_flops_per_token(shape: "ModelShape", seq_len: int) -> int:
    """Forward + backward model FLOPs per token: 3 x forward (no recomputation counted)."""
    return 3 * forward_flops_per_token(shape, seq_len)


def six_n_flops_per_token(shape: "ModelShape") -> int:
    """6 x non-embedding parameters (Kaplan's C = 6ND): no attention core, no LM head."""
    return 6 * shape.num_non_embedding_parameters()


def mfu(tokens_per_second: float, shape: "ModelShape", seq_len: int, peak_flops: float, num_devices: int = 1) -> float:
    """Model FLOPs utilisation: ``tokens_per_second`` (the whole job's) x training model FLOPs per
    token, over ``num_devices`` x ``peak_flops`` (one device's peak, e.g. ``PEAK_BF16_FLOPS["h100-sxm"]``)."""
    return tokens_per_second * training_flops_per_token(shape, seq_len) / (num_devices * peak_flops)


def peak_bf16_flops(device_name: str) -> "float | None":
    """The dense bf16 peak of a GPU from its name (``torch.cuda.get_device_name()``); None when unknown."""
    name = device_name.lower()
    if "h200" in name:
        return PEAK_BF16_FLOPS["h200"]
    if "h100" in name:
        return PEAK_BF16_FLOPS["h100-nvl" if "nvl" in name else "h100-pcie" if "pcie" in name else "h100-sxm"]
    return None


def six_n_mfu(tokens_per_second: float, shape: "ModelShape", peak_flops: float, num_devices: int = 1) -> float:
    """The same utilisation in the 6N convention, to report beside ``mfu`` (docs/design.md)."""
    return tokens_per_second * six_n_flops_per_token(shape) / (num_devices * peak_flops)
