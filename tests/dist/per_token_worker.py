"""Worker for tests/test_per_token_loss.py: one global batch through megatron's schedules at a layout.

    RANK=.. WORLD_SIZE=.. MASTER_ADDR=127.0.0.1 MASTER_PORT=.. python tests/dist/per_token_worker.py \
        --pp 2 --jobs train:4,eval:4:empty --out DIR

The global batch is ``ROWS`` sequences with an uneven loss mask (half of row 0's tokens masked, the
rest all ones), split evenly over the data-parallel ranks (world / pp) and, on each rank, into
``micro`` micro-batches. Every model is a tiny SODA-vocabulary GPT whose weights are set from each
parameter's *global* name (layer numbers made global), so every layout holds the same weights without
a checkpoint. Jobs (comma-separated):

``reference``: one process, the bare model, all rows in one forward; the loss computed by hand in
plain torch as sum(ce + w * lse^2 over loss tokens) / (loss tokens), and its gradient. Also the old
rule's value for ``ROWS`` micro-batches of one row (the mean of the micro-batch means).
``train:<micro>[:empty]``: megatron DDP + ``finalize_model_grads`` (as the trainer sets them up) and
``step.forward_backward`` over the micro-batches, plus one all-masked micro-batch with ``empty``;
the combined metrics and the finalized gradients (``main_grad``).
``eval:<micro>[:empty]``: the same forward-only, without DDP.

Each job writes ``DIR/<job>/metrics.json`` (last stage, first data-parallel rank) and
``DIR/<job>/grads-pp<stage>.pt`` (first data-parallel rank of every stage: global name -> gradient).
"""

import argparse
import json
import os
import re
import warnings
import zlib

import torch
import torch.nn.functional as F

ROWS, SEQ, Z_WEIGHT = 4, 16, 1e-2


def layout():
    from tests.dist.loss_worker import layout as small_layout

    return small_layout()


def shape():
    from megatron_soda.models.presets import get_preset

    return get_preset("tiny", vocab_size=layout().vocab_size, num_layers=2)


def global_batch():
    """tokens, labels, loss_mask, position_ids of the whole global batch ``[ROWS, SEQ]``."""
    generator = torch.Generator().manual_seed(0)
    vocab = layout().vocab_size
    data = torch.randint(0, vocab, (ROWS, SEQ + 1), generator=generator)
    mask = torch.ones(ROWS, SEQ)
    mask[0, : SEQ // 2] = 0.0  # half of one row's tokens carry no loss: the uneven case
    return {"tokens": data[:, :-1].contiguous(), "labels": data[:, 1:].contiguous(), "loss_mask": mask,
            "position_ids": torch.arange(SEQ).expand(ROWS, -1).contiguous()}


def split(batch, rows):
    """Micro-batches of ``rows`` rows each."""
    return [{k: v[i:i + rows].contiguous() for k, v in batch.items()} for i in range(0, batch["tokens"].size(0), rows)]


def global_names(module):
    """(global name, parameter) of a bare GPTModel stage: ``decoder.layers.<i>`` numbered over the whole model."""
    numbers = {str(i): str(layer.layer_number - 1) for i, layer in enumerate(module.decoder.layers)}
    for name, param in module.named_parameters():
        yield re.sub(r"^decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{numbers[m.group(1)]}.", name), param


@torch.no_grad()
def set_weights(module):
    """Every parameter from a generator seeded by its global name: norms near 1, matrices small."""
    for name, param in global_names(module):
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        values = torch.randn(param.shape, generator=generator)
        param.copy_(1 + 0.1 * values if "norm" in name else 0.08 * values)


def build(pp):
    from megatron_soda.models.gpt import transformer_config
    from megatron_soda.training import parallel

    config = transformer_config(shape(), pipeline_parallel=pp)
    chunks = parallel.build_model_chunks(shape(), config, attention_backend="sdpa")
    for chunk in chunks:
        set_weights(chunk)
    return config, chunks


def reference():
    """The hand-computed per-token loss of the whole batch and its gradient (bare model, one forward)."""
    _, (model,) = build(1)
    batch = global_batch()
    logits = model(batch["tokens"], batch["position_ids"], None, labels=None).float()  # [ROWS, SEQ, padded vocab]
    labels, mask = batch["labels"].reshape(-1), batch["loss_mask"].reshape(-1)
    flat = logits.reshape(-1, logits.size(-1))
    ce = F.cross_entropy(flat, labels, reduction="none")
    lse = torch.logsumexp(flat, dim=-1)
    count = mask.sum()
    ce_sum, z_sum = (ce * mask).sum(), Z_WEIGHT * (lse.square() * mask).sum()
    ((ce_sum + z_sum) / count).backward(retain_graph=True)
    grads = {name: param.grad.detach().clone() for name, param in global_names(model)}
    # The old rule for ROWS micro-batches of one row: each micro-batch's mean counts the same.
    rows_ce = (ce * mask).reshape(ROWS, SEQ).sum(1) / batch["loss_mask"].sum(1)
    rows_z = Z_WEIGHT * (lse.square() * mask).reshape(ROWS, SEQ).sum(1) / batch["loss_mask"].sum(1)
    old = (rows_ce + rows_z).mean()
    names, params = zip(*global_names(model))
    old_grads = torch.autograd.grad(old, params)
    metrics = {"lm loss": (ce_sum / count).item(), "z loss": (z_sum / count).item(), "tokens": count.item(),
               "mean of micro-batch means": old.item(),
               "mean of means grad diff": max((g - grads[n]).abs().max().item() for n, g in zip(names, old_grads))}
    return metrics, grads


def run(job, pp):
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    from megatron_soda.training.loss import LossSettings, combine_metrics
    from megatron_soda.training.step import forward_backward

    kind, micro, *flags = job.split(":")
    micro = int(micro)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    rows = ROWS // dp
    mine = {k: v[dp_rank * rows:(dp_rank + 1) * rows] for k, v in global_batch().items()}
    batches = split(mine, rows // micro)
    if "empty" in flags:  # a padded micro-batch: real tokens, no loss token
        batches.append({**batches[0], "loss_mask": torch.zeros_like(batches[0]["loss_mask"])})
    config, chunks = build(pp)
    settings = LossSettings(z_loss_weight=Z_WEIGHT, layout=layout())
    if kind == "train":
        config.finalize_model_grads_func = finalize_model_grads
        model = [DistributedDataParallel(config, DistributedDataParallelConfig(), chunk) for chunk in chunks]
        for chunk in model:
            chunk.zero_grad_buffer()
        results = forward_backward(model, batches, seq_length=SEQ, micro_batch_size=rows // micro, loss=settings)
        grads = {name: param.main_grad.detach().clone() for chunk in chunks for name, param in global_names(chunk)}
    else:
        with torch.no_grad():
            results = forward_backward(chunks, batches, seq_length=SEQ, micro_batch_size=rows // micro,
                                       forward_only=True, loss=settings)
        grads = None
    metrics = combine_metrics(results, parallel_state.get_data_parallel_group())
    return metrics, results, grads


def main():
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from megatron.core import parallel_state

    from megatron_soda.training import parallel

    parallel.initialize(parallel.ParallelLayout(pipeline=args.pp), seed=1234)
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    first_dp = parallel_state.get_data_parallel_rank() == 0
    for job in args.jobs.split(","):
        if job == "reference":
            metrics, grads = reference()
            results = None
        else:
            metrics, results, grads = run(job, args.pp)
        folder = os.path.join(args.out, job.replace(":", "-"))
        os.makedirs(folder, exist_ok=True)
        if first_dp and grads is not None:
            torch.save(grads, os.path.join(folder, f"grads-pp{pp_rank}.pt"))
        if first_dp and parallel_state.is_pipeline_last_stage():
            with open(os.path.join(folder, "metrics.json"), "w") as f:
                json.dump({"combined": metrics, "micro_batches": results}, f)
    parallel.destroy()


if __name__ == "__main__":
    main()
