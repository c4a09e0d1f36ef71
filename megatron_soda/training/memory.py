"""Training memory per GPU, estimated from the shape and the layout (``pretrain --dry-run`` prints it).

Bytes on the most loaded GPU: the pipeline stage with the larger total of the first (embedding,
``pp`` micro-batches in flight under 1F1B) and the last (LM head, the vocabulary's logits buffers).

**States**, per parameter on the stage: weights 2 bytes in bf16, 4 in fp32; gradients 4 (our DDP sets
``grad_reduce_in_fp32=True``, so megatron's grad buffer is fp32, and it is never sharded); optimizer
state 12 in bf16 (fp32 main params, exp_avg, exp_avg_sq) or 8 in fp32 (the moments; the params are
the main copy), divided over DP by the distributed optimizer. Matrices and the vocabulary split over
TP; norms (RMSNorm, QK-norm) are replicated. With PP > 1 a tied LM head is a copy of the embedding.

**Activations** (Korthikanti et al. 2022, "Reducing Activation Recomputation", Sec. 4, redone for
our layer as megatron-core 0.16 runs it). Per layer and token, in elements of the activation dtype,
``h`` width, ``q = a d`` query width, ``k = g d`` key/value width (GQA), ``f`` FFN width::

    attention  2h        input RMSNorm's input; the QKV projection's input (the norm's output)
               q + 2k    QKV output, kept whole: the k-norm's input and the kernel's v are views of it
               q         q-norm's input (the split-off q is copied to reshape it into heads)
               q + k     q, k after QK-norm and RoPE: the kernel's inputs (RoPE saves only cos/sin)
               q         kernel output (the output projection's input is a view of it)
    MLP        2h        pre-MLP RMSNorm's input; fc1's input
               2f        fc1 output (gate, up); silu's input is a view of it
               3f        silu(gate), ``up + glu_linear_offset`` (a new tensor), fc2's input
    total      4h + 4q + 3k + 5f

Assumptions: fused norms that save their input only (TE's; per-token fp32 statistics such as rstd
and the kernel's logsumexp, and RoPE's [s, d] tables, are left out), no dropout, no biases,
flash/SDPA attention (no ``s x s`` map), unfused SwiGLU (our config sets
``bias_activation_fusion=False``). Without sequence parallelism the ``4h`` terms are whole on every
TP rank and the rest is split; with it everything is split. Recompute: ``"full"`` keeps each layer's
input (``h``) and rematerializes one layer at a time; ``"selective"`` (megatron's core_attn) drops
only the kernel's internals: its inputs stay saved by the checkpoint and its output by the output
projection, so with no score map to drop it changes nothing counted here.

**Logits** (last stage): ``b s V/tp`` bf16 logits (live while the loss is formed, and as their
gradient on the way back) plus the fp32 softmax our loss keeps for backward (fp32 logits are
overwritten by it: 4 bytes, not 8), and the final norm's and LM head's inputs (``2h``).

Not counted: CUDA context, NCCL and allocator overhead, transient buffers (a few GiB in practice).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    from megatron_soda.models.presets import ModelShape

GIB = 1024**3
RECOMPUTE_GRANULARITIES = (None, "selective", "full")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on one GPU of the most loaded pipeline stage."""

    weights: int
    """Model parameters in their training dtype."""
    gradients: int
    """megatron's DDP grad buffer (fp32)."""
    optimizer_state: int
    """fp32 main params (bf16 training) and Adam's two moments, sharded over DP if distributed."""
    activations: int
    """Transformer layers' saved activations x micro-batches in flight (plus one recomputed layer)."""
    logits: int
    """Last stage: logits, the fp32 softmax kept for backward, the final norm's and head's inputs."""
    stage: str
    """Which stage: ``only`` (PP=1), ``first`` or ``last``."""
    parameters: int
    """Parameters on this GPU."""
    layers: int
    """Transformer layers on this stage."""
    micro_batches_in_flight: int
    """Micro-batches whose activations this stage holds at once (1F1B); with interleaving, model-chunk
    micro-batches, each through ``layers / virtual_pipeline`` layers."""
    virtual_pipeline: int = 1
    """Model chunks per stage (the interleaved schedule)."""

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.activations + self.logits

    def as_dict(self) -> dict:
        """Every field (bytes) plus ``total``, for JSON."""
        return {**asdict(self), "total": self.total}

    def lines(self) -> List[str]:
        """A short table in GiB."""
        rows = [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimizer state", self.optimizer_state),
            ("activations", self.activations),
            ("logits", self.logits),
            ("total", self.total),
        ]
        head = (
            f"memory per GPU, estimated ({self.stage} stage: {self.layers} layers, {self.parameters:,} "
            f"parameters, {self.micro_batches_in_flight} micro-batch(es) in flight"
            + (f" through chunks of {self.layers // self.virtual_pipeline} layers" if self.virtual_pipeline > 1 else "")
            + ")"
        )
        return (
            [head]
            + [f"  {name:<16} {value / GIB:8.2f} GiB" for name, value in rows]
            + ["  (not counted: CUDA context, NCCL, allocator fragmentation; leave a few GiB)"]
        )

    def format(self) -> str:
        return "\n".join(self.lines())


def _split_and_replicated_layer_parameters(shape: "ModelShape"):
    """One layer's (TP-split, replicated) parameters: matrices (and q/k/v biases) split, norms not."""
    h = shape.hidden_size
    replicated = 2 * h + (2 * shape.kv_channels if shape.qk_layernorm else 0) + (h if shape.bias else 0)
    return shape.layer_parameters() - replicated, replicated


def stage_parameters(shape: "ModelShape", *, tensor_parallel: int, layers: int, first: bool, last: bool) -> int:
    """Parameters on one TP rank of a stage of ``layers`` layers (padded vocabulary)."""
    split, replicated = _split_and_replicated_layer_parameters(shape)
    n = layers * (split // tensor_parallel + replicated)
    table = shape.padded_vocab_size() * shape.hidden_size // tensor_parallel
    if first:
        n += table
    if last:
        n += shape.hidden_size  # final norm
        if not (first and shape.tie_embeddings):
            n += table  # LM head (with PP > 1 a tied one is a copy of the embedding)
    return n


def layer_activation_bytes(
    shape: "ModelShape",
    *,
    micro_batch_size: int,
    seq_length: int,
    tensor_parallel: int,
    sequence_parallel: bool,
    bytes_per_element: int,
    recompute_granularity: Optional[str] = None,
) -> int:
    """Saved activations of one layer for one micro-batch (formula in the module docstring)."""
    h, d, t = shape.hidden_size, shape.kv_channels, tensor_parallel
    q, k, f = shape.num_attention_heads * d, shape.num_query_groups * d, shape.ffn_hidden_size
    tokens = micro_batch_size * seq_length
    whole = tokens * h // (t if sequence_parallel else 1)  # one [s, b, h] tensor on this rank
    if recompute_granularity == "full":
        return whole * bytes_per_element  # the layer's input
    # "selective" drops nothing counted here (no s x s map with flash/SDPA kernels; see the docstring).
    split = tokens * (4 * q + 3 * k + 5 * f) // t
    return (4 * whole + split) * bytes_per_element  # 4h: norm inputs, QKV and fc1 inputs


def estimate_memory(
    shape: "ModelShape",
    *,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    data_parallel: int = 1,
    micro_batch_size: int,
    seq_length: int,
    bf16: bool = True,
    distributed_optimizer: bool = False,
    recompute_granularity: Optional[str] = None,
    num_micro_batches_in_flight: Optional[int] = None,
    sequence_parallel: bool = False,
    grad_reduce_in_fp32: bool = True,
    virtual_pipeline: Optional[int] = None,
) -> MemoryEstimate:
    """Bytes per GPU on the most loaded pipeline stage (see the module docstring for every term).

    ``num_micro_batches_in_flight`` overrides the first stage's 1F1B count (``pipeline_parallel``; pass
    fewer when a step has fewer micro-batches than stages). The last stage of a pipeline holds one.

    ``virtual_pipeline`` (v chunks per stage, the interleaved schedule): megatron's first stage runs
    ``2 (p - 1) + (v - 1) p`` warm-up forwards of model chunks before its first backward, so it holds
    ``2 (p - 1) + (v - 1) p + 1`` chunk micro-batches of ``layers / v`` layers each: ``1 + (p - 1) / (p v)``
    times the activations of plain 1F1B (the interleaving paper's overhead), up to that bound.
    """
    t, p = tensor_parallel, pipeline_parallel
    for name, value in (
        ("tensor_parallel", t),
        ("pipeline_parallel", p),
        ("data_parallel", data_parallel),
        ("micro_batch_size", micro_batch_size),
        ("seq_length", seq_length),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if recompute_granularity not in RECOMPUTE_GRANULARITIES:
        raise ValueError(
            f"recompute_granularity must be one of {RECOMPUTE_GRANULARITIES}, got {recompute_granularity!r}"
        )
    if num_micro_batches_in_flight is not None and num_micro_batches_in_flight < 1:
        raise ValueError(f"num_micro_batches_in_flight must be >= 1, got {num_micro_batches_in_flight}")
    for name in ("num_attention_heads", "num_query_groups", "ffn_hidden_size"):
        if getattr(shape, name) % t:
            raise ValueError(f"tensor_parallel={t} does not divide {name}={getattr(shape, name)}")
    if shape.padded_vocab_size() % t:
        raise ValueError(f"tensor_parallel={t} does not divide the padded vocabulary {shape.padded_vocab_size()}")
    if shape.num_layers % p:
        raise ValueError(f"{shape.num_layers} layers do not split into {p} pipeline stages")
    v = virtual_pipeline or 1
    if v < 1 or (shape.num_layers // p) % v:
        raise ValueError(
            f"virtual_pipeline={virtual_pipeline} does not split the {shape.num_layers // p} layers of a stage"
        )

    weight_bytes = 2 if bf16 else 4
    grad_bytes = 4 if grad_reduce_in_fp32 else weight_bytes
    optimizer_bytes = 12 if bf16 else 8  # (fp32 main params +) exp_avg + exp_avg_sq
    layers = shape.num_layers // p
    activation = dict(
        micro_batch_size=micro_batch_size,
        seq_length=seq_length,
        tensor_parallel=t,
        sequence_parallel=sequence_parallel,
        bytes_per_element=weight_bytes,
    )
    per_layer = layer_activation_bytes(shape, recompute_granularity=recompute_granularity, **activation)
    # Full recompute rematerializes one layer's activations at a time during backward.
    working = layer_activation_bytes(shape, **activation) if recompute_granularity == "full" else 0
    tokens = micro_batch_size * seq_length

    def stage(name: str, first: bool, last: bool) -> MemoryEstimate:
        n = stage_parameters(shape, tensor_parallel=t, layers=layers, first=first, last=last)
        if last and not first:
            in_flight = v  # the last stage's chunks each hold one micro-batch until its backward
        elif num_micro_batches_in_flight is not None:
            in_flight = num_micro_batches_in_flight * v
        else:
            in_flight = 2 * (p - 1) + (v - 1) * p + 1 if v > 1 else p
        logits = 0
        if last:
            vocab = shape.padded_vocab_size() // t
            head_inputs = 2 * tokens * shape.hidden_size // (t if sequence_parallel else 1)
            softmax = 4 + (weight_bytes if bf16 else 0)  # fp32 logits are overwritten by the softmax
            logits = tokens * vocab * softmax + head_inputs * weight_bytes
        optimizer = n * optimizer_bytes
        if distributed_optimizer:
            optimizer = -(-optimizer // data_parallel)
        return MemoryEstimate(
            weights=n * weight_bytes,
            gradients=n * grad_bytes,
            optimizer_state=optimizer,
            activations=in_flight * (layers // v) * per_layer + working,
            logits=logits,
            stage=name,
            parameters=n,
            layers=layers,
            micro_batches_in_flight=in_flight,
            virtual_pipeline=v,
        )

    if p == 1:
        return stage("only", True, True)
    return max(stage("first", True, False), stage("last", False, True), key=lambda e: e.total)
