"""Worker for tests/test_cautious_parallel.py, run on every rank: 3 Cautious AdamW steps at TP x DP layouts.

    RANK=.. WORLD_SIZE=.. MASTER_ADDR=127.0.0.1 MASTER_PORT=.. python tests/dist/cautious_worker.py \
        --init DIR [--save-init] [--final DIR | --compare DIR] --run 2:scoped,local --run 1:scoped,distopt --out r.json

The world is TP x DP (no pipeline); each ``--run TP:VARIANTS`` sets up megatron's groups for that TP
size (DP takes the rest) and trains each variant afresh from the same start. The reference run (one
rank) initializes the ``tiny`` model with a small vocabulary and saves it (``--save-init``) as a
megatron-core dist checkpoint, trains, and saves the trained weights (``--final``). Every other run
loads the same start, trains on the same global batches (``MICRO_BATCHES`` micro-batches per step,
split over the DP ranks) and, with ``--compare``, loads the reference's trained weights into a second
model of its own layout (megatron reshards them) to compare its shards with, tensor by tensor.

Variants: ``scoped``: ``build_megatron_optimizer`` as it is (megatron DDP, ``FP32Optimizer``);
``distopt``: megatron's ``DistributedOptimizer`` instead, one parameter per grad bucket so that every
large parameter is sliced over the DP ranks (run on CPU through ``pretend_cpu_tensors_are_cuda_types``);
``float16-wrapper``: megatron's ``Float16OptimizerWithFloat16Params`` (``bf16=True``) around the fp32
model (so its parameters are its ``fp32_from_fp32_groups``; the same arithmetic as ``scoped``);
a ``-local`` suffix (``local`` alone: scoped) removes the optimizer's mask scope: the cautious mean over
the piece this process holds, as before the scope existed. Global rank 0 writes the JSON,
``{"tp<N>": {variant: result}}``: the global batch's micro-batch losses per step, a forward-only loss
after the last step, the wrapper types and whether each inner optimizer got a scope, the largest
per-tensor relative weight difference from the reference and how far the weights moved (both
``relative_difference``, over all ranks).
"""

import argparse
import json
import os
import warnings

import torch

VOCAB = 200
SEQ, MICRO_BATCH, MICRO_BATCHES, STEPS = 16, 2, 2, 3


def global_batch(step, vocab):
    generator = torch.Generator().manual_seed(100 + step)
    out = []
    for _ in range(MICRO_BATCHES):
        data = torch.randint(0, vocab, (MICRO_BATCH, SEQ + 1), generator=generator)
        out.append({"tokens": data[:, :-1].contiguous(), "labels": data[:, 1:].contiguous(),
                    "loss_mask": torch.ones(MICRO_BATCH, SEQ),
                    "position_ids": torch.arange(SEQ).expand(MICRO_BATCH, -1).contiguous()})
    return out


def relative_difference(ours, theirs):
    """|a - b| / |b| (Frobenius norms) per tensor, the largest over this rank's tensors (or shards).

    Not the largest entry: Adam with SODA's eps (1e-16) turns rounding-level differences in tiny
    gradients into entry-level differences near 1e-5 relative to the tensor's largest entry.
    """
    return max(((a - b).norm() / b.norm()).item() for a, b in zip(ours, theirs))


def pretend_cpu_tensors_are_cuda_types():
    """Test-only: megatron's DistributedOptimizer sorts parameters by ``param.type()`` and refuses
    anything but ``torch.cuda.*Tensor``; report CPU float tensors as their CUDA type so it runs on gloo
    (everything else it needs on CPU, ``cpu_compat`` provides; gloo has reduce-scatter and all-gather).
    """
    cpu_type = torch.Tensor.type

    def type_(self, dtype=None, *args, **kwargs):
        name = cpu_type(self, dtype, *args, **kwargs)
        if dtype is None and name in ("torch.FloatTensor", "torch.HalfTensor", "torch.BFloat16Tensor"):
            return name.replace("torch.", "torch.cuda.")
        return name

    torch.Tensor.type = type_


def main():
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--init", required=True)
    parser.add_argument("--save-init", action="store_true", help="initialize from the seed and save to --init")
    parser.add_argument("--final", help="save the first run's trained weights here")
    parser.add_argument("--compare", help="the reference's trained weights, to compare with")
    parser.add_argument("--run", action="append", required=True,
                        help="TP:VARIANTS, comma-separated: scoped, local, float16-wrapper, distopt, distopt-local")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runs = [(int(tp), variants.split(",")) for tp, variants in (run.split(":") for run in args.run)]
    if any(variant.startswith(("distopt", "float16")) for _, variants in runs for variant in variants):
        pretend_cpu_tensors_are_cuda_types()

    import torch.distributed as dist
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    from megatron_soda.models.gpt import transformer_config
    from megatron_soda.models.presets import get_preset
    from megatron_soda.training import parallel
    from megatron_soda.training.config import OptimizerConfig
    from megatron_soda.training.optimizer import MaskScope, build_megatron_optimizer
    from megatron_soda.training.schedules import apply_lr
    from megatron_soda.training.step import forward_backward

    shape = get_preset("tiny", vocab_size=VOCAB)

    def sharded(chunks):
        return {"model0": chunks[0].sharded_state_dict(prefix="")}

    def model_and_load(config, directory):
        chunks = parallel.build_model_chunks(shape, config, attention_backend="sdpa")
        chunks[0].load_state_dict(dist_checkpointing.load(sharded(chunks), directory)["model0"])
        return chunks

    def global_losses(results):
        """This DP rank's micro-batch losses, gathered in global micro-batch order."""
        dp = parallel_state.get_data_parallel_world_size()
        mine = torch.tensor([r["lm loss"] for r in results], dtype=torch.float64)
        parts = [torch.empty_like(mine) for _ in range(dp)]
        dist.all_gather(parts, mine, group=parallel_state.get_data_parallel_group())
        return torch.stack(parts, dim=1).flatten().tolist()  # rank r holds micro-batches r, r + dp, ...

    def train(config, variant):
        dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
        chunks = model_and_load(config, args.init)
        start = [p.detach().clone() for p in chunks[0].parameters()]
        distopt = variant.startswith("distopt")
        # One parameter per bucket (megatron ignores bucket_size without overlap_grad_reduce): the
        # distributed optimizer shards each bucket over the DP ranks, so every parameter of more than
        # a few hundred entries is split between them; the small ones (norms) sit whole on one rank.
        ddp_config = (DistributedDataParallelConfig(use_distributed_optimizer=True, overlap_grad_reduce=True,
                                                    bucket_size=1) if distopt else DistributedDataParallelConfig())
        model = [DistributedDataParallel(config, ddp_config, chunk) for chunk in chunks]
        settings = OptimizerConfig(  # SODA's hyperparameters, at a larger lr
            name="cautious", lr=1e-2, adam_beta1=0.98, adam_beta2=0.98, adam_eps=1e-16, weight_decay=0.033,
            adamc=True, clip_grad=1.0,
        )
        optimizer = build_megatron_optimizer(model, settings, use_distributed_optimizer=distopt,
                                             bf16=variant == "float16-wrapper")
        wrappers = [type(sub).__name__ for sub in optimizer.chained_optimizers]
        inner = [sub.optimizer for sub in optimizer.chained_optimizers]
        scoped = [isinstance(opt.mask_scope, MaskScope) for opt in inner]
        if variant.endswith("local"):
            for opt in inner:
                opt.mask_scope = None
        losses = []
        for step in range(STEPS):
            for chunk in model:
                chunk.zero_grad_buffer()
            optimizer.zero_grad()
            apply_lr(optimizer, settings.lr)
            results = forward_backward(model, global_batch(step, shape.vocab_size)[dp_rank::dp], seq_length=SEQ,
                                       micro_batch_size=MICRO_BATCH)
            ok, _, _ = optimizer.step()
            assert ok, f"optimizer step {step} failed"
            losses.append(global_losses(results))
        after = global_losses(forward_backward(model, global_batch(0, shape.vocab_size)[dp_rank::dp], seq_length=SEQ,
                                               micro_batch_size=MICRO_BATCH, forward_only=True))
        trained = list(chunks[0].parameters())
        moved = torch.tensor(relative_difference(trained, start))
        dist.all_reduce(moved, op=dist.ReduceOp.MIN)
        result = {"losses": losses, "after": after, "wrappers": wrappers, "scoped": scoped, "moved": moved.item()}
        if args.compare:
            reference = model_and_load(config, args.compare)
            diff = torch.tensor(relative_difference(trained, list(reference[0].parameters())))
            dist.all_reduce(diff, op=dist.ReduceOp.MAX)
            result["weight_diff"] = diff.item()
        return chunks, result

    out = {}
    for tp, variants in runs:
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        parallel.initialize(parallel.ParallelLayout(tensor=tp), seed=1234)
        config = transformer_config(shape, tensor_parallel=tp)
        config.finalize_model_grads_func = finalize_model_grads
        if args.save_init and not out:
            os.makedirs(args.init, exist_ok=True)
            dist_checkpointing.save(sharded(parallel.build_model_chunks(shape, config, attention_backend="sdpa")),
                                    args.init)
        for variant in variants:
            chunks, out.setdefault(f"tp{tp}", {})[variant] = train(config, variant)
            if args.final and len(out) == 1 and len(out[f"tp{tp}"]) == 1:
                os.makedirs(args.final, exist_ok=True)
                dist_checkpointing.save(sharded(chunks), args.final)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(out, f)
    parallel.destroy()


if __name__ == "__main__":
    main()
