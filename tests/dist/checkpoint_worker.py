"""Worker for tests/test_checkpointing.py, run on every rank: train, save, resume.

Trains the ``tiny`` preset with megatron's DDP, ``build_megatron_optimizer`` (Cautious AdamW), an
LR schedule and fixed batches that depend only on the step, so an interrupted run and an
uninterrupted one see the same data.

    RANK=.. WORLD_SIZE=.. MASTER_ADDR=127.0.0.1 MASTER_PORT=.. python tests/dist/checkpoint_worker.py \
        --tp 2 --dir CKPT [--resume] --until 6 [--save-at 3 6] --out result.json

Writes ``{"start": ..., "losses": {step: [micro-batch losses]}, "rng": {step: draws}, "info": ...}`` from
the rank that holds the losses (last pipeline stage, TP rank 0), and ``{"error": ...}`` from rank 0
when ``--expect-error`` is given and loading fails.

Test hook (environment): ``SODA_TEST_KILL_AFTER_SHARDS=N`` makes every rank SIGKILL itself (and its
child processes) as soon as ``dist_checkpointing.save`` returns for iteration N, i.e. after the
shards are on disk and before the checkpoint is published: what a job killed mid-save leaves behind.
"""

import argparse
import json
import os
import random
import signal
import warnings

import numpy as np
import torch

SEQ_LENGTH, MICRO_BATCH, MICRO_BATCHES = 16, 2, 2


def batches_for(step, vocab):
    """The micro-batches of update ``step``: a function of the step alone."""
    generator = torch.Generator().manual_seed(1000 + step)
    out = []
    for _ in range(MICRO_BATCHES):
        data = torch.randint(0, vocab, (MICRO_BATCH, SEQ_LENGTH + 1), generator=generator)
        out.append({"tokens": data[:, :-1].contiguous(), "labels": data[:, 1:].contiguous(),
                    "loss_mask": torch.ones(MICRO_BATCH, SEQ_LENGTH),
                    "position_ids": torch.arange(SEQ_LENGTH).expand(MICRO_BATCH, -1).contiguous()})
    return out


def lm_losses(results):
    """The micro-batch losses out of ``forward_backward``'s results (metric dicts, or bare floats)."""
    return [r["lm loss"] if isinstance(r, dict) else r for r in results]


def draw_rngs():
    """One draw from each RNG a checkpoint restores (python and numpy are left unseeded on purpose)."""
    return [random.random(), float(np.random.rand()), torch.rand(1).item()]


def install_kill_hook():
    iteration = os.environ.get("SODA_TEST_KILL_AFTER_SHARDS")
    if iteration is None:
        return
    import psutil
    from megatron.core import dist_checkpointing

    real_save = dist_checkpointing.save

    def save_then_die(state, directory, *args, **kwargs):
        result = real_save(state, directory, *args, **kwargs)
        if f"iter_{int(iteration):07d}" in str(directory):
            # As a job kill does (the whole cgroup): megatron's writer keeps a spawned Manager process
            # per rank, which would outlive a lone SIGKILL and hold the launcher's pipe open.
            for child in psutil.Process().children(recursive=True):
                child.kill()
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    dist_checkpointing.save = save_then_die


def main():
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--dir", required=True, help="checkpoint directory (save and load)")
    parser.add_argument("--resume", action="store_true", help="load the latest checkpoint in --dir first")
    parser.add_argument("--iteration", type=int, default=None, help="with --resume: load this iteration")
    parser.add_argument("--until", type=int, default=0, help="train until this many updates are done")
    parser.add_argument("--save-at", type=int, nargs="*", default=[])
    parser.add_argument("--no-load-optimizer", action="store_true")
    parser.add_argument("--ffn", type=int, default=None, help="override the preset's ffn_hidden_size")
    parser.add_argument("--tied", action="store_true", help="tie the LM head to the embedding")
    parser.add_argument("--expect-error", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    from megatron_soda.models.gpt import transformer_config
    from megatron_soda.models.presets import get_preset
    from megatron_soda.training import checkpointing, parallel
    from megatron_soda.training.config import OptimizerConfig
    from megatron_soda.training.optimizer import build_megatron_optimizer
    from megatron_soda.training.schedules import LRSchedule, apply_lr
    from megatron_soda.training.step import forward_backward

    install_kill_hook()
    shape = get_preset("tiny", tie_embeddings=args.tied, **({"ffn_hidden_size": args.ffn} if args.ffn else {}))
    parallel.initialize(parallel.ParallelLayout(args.tp, args.pp), seed=1234)
    config = transformer_config(shape, tensor_parallel=args.tp, pipeline_parallel=args.pp)
    config.finalize_model_grads_func = finalize_model_grads
    chunks = parallel.build_model_chunks(shape, config, attention_backend="sdpa")
    model = [DistributedDataParallel(config, DistributedDataParallelConfig(), chunk) for chunk in chunks]
    settings = OptimizerConfig(lr=3e-3, clip_grad=1.0)
    optimizer = build_megatron_optimizer(model, settings)
    schedule = LRSchedule(total_steps=8, lr=settings.lr, warmup_iters=2, decay_iters=3)
    writer = parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
    result = {"start": 0, "losses": {}}

    if args.resume:
        try:
            loaded = checkpointing.load_checkpoint(args.dir, model, optimizer, iteration=args.iteration,
                                                     load_optimizer=not args.no_load_optimizer)
        except Exception as error:
            if not args.expect_error:
                raise
            if torch.distributed.get_rank() == 0:
                with open(args.out, "w") as f:
                    json.dump({"error": f"{type(error).__name__}: {error}"}, f)
            parallel.destroy()
            return
        result["start"], result["info"] = loaded["iteration"], loaded
        result["rng"] = {loaded["iteration"]: draw_rngs()}
        assert loaded["scheduler_state"] == {"step": loaded["iteration"]}, loaded
        assert loaded["consumed_samples"] == loaded["iteration"] * MICRO_BATCH * MICRO_BATCHES

    def save(iteration):
        checkpointing.save_checkpoint(
            args.dir, iteration, model, optimizer, scheduler_state={"step": iteration},
            consumed_samples=iteration * MICRO_BATCH * MICRO_BATCHES,
            extra={"model_shape": {"ffn_hidden_size": shape.ffn_hidden_size},
                   "padded_vocab_size": shape.padded_vocab_size()})
        result.setdefault("rng", {})[iteration] = draw_rngs()  # training draws none: no effect on losses

    if result["start"] == 0 and 0 in args.save_at:  # before any update: the optimizer holds no state yet
        save(0)
    for step in range(result["start"], args.until):
        for chunk in model:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        apply_lr(optimizer, schedule.lr_at(step))
        losses = forward_backward(model, batches_for(step, shape.vocab_size), seq_length=SEQ_LENGTH,
                                  micro_batch_size=MICRO_BATCH)
        ok, _, _ = optimizer.step()
        assert ok, f"optimizer step {step} failed"
        result["losses"][step + 1] = lm_losses(losses)
        if step + 1 in args.save_at:
            save(step + 1)

    if writer:
        with open(args.out, "w") as f:
            json.dump(result, f)
    parallel.destroy()


if __name__ == "__main__":
    main()
