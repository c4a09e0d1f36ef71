"""Worker for tests/test_evaluate.py: likelihood scores of a checkpoint at a training layout.

    RANK=.. WORLD_SIZE=.. MASTER_ADDR=.. MASTER_PORT=.. python tests/dist/parallel_scoring_worker.py \
        --load CKPT --items items.npz --out scores.npy --tp 2 --pp 2 [--vp N]

Loads the checkpoint resharded to TP x PP (x DP from the world size), scores the items (``ids_i``,
``targets_i`` arrays in the npz) with ``parallel_mean_log_probs`` and writes the scores from rank 0.
"""

import argparse
import warnings

import numpy as np


def main():
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", required=True)
    parser.add_argument("--items", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--vp", type=int, default=None)
    parser.add_argument("--vocab", type=int, required=True)
    parser.add_argument("--pad", type=int, required=True)
    args = parser.parse_args()

    import torch.distributed as dist

    from megatron_soda.evaluation.parallel_scoring import parallel_mean_log_probs
    from megatron_soda.evaluation.scoring import ScoringItem
    from megatron_soda.models.gpt import transformer_config
    from megatron_soda.models.shape_record import checkpoint_model_shape
    from megatron_soda.training import checkpointing, parallel

    parallel.initialize(parallel.ParallelLayout(args.tp, args.pp, args.vp), seed=1234)
    info = checkpointing.read_checkpoint_info(args.load)
    shape = checkpoint_model_shape(info["extra"], args.vocab, args.load)
    config = transformer_config(
        shape,
        tensor_parallel=args.tp,
        pipeline_parallel=args.pp,
        virtual_pipeline_parallel=args.vp,
        attention_backend="sdpa",
    )
    model = parallel.build_model_chunks(shape, config, attention_backend="sdpa")
    checkpointing.load_checkpoint(args.load, model, None, load_optimizer=False, load_rng=False)
    data = np.load(args.items)
    items = [ScoringItem(data[f"ids_{i}"], data[f"targets_{i}"]) for i in range(len(data.files) // 2)]
    scores = parallel_mean_log_probs(
        model, items, seq_length=128, micro_batch_size=2, vocab_size=args.vocab, pad_id=args.pad
    )
    if dist.get_rank() == 0:
        np.save(args.out, scores)
    parallel.destroy()


if __name__ == "__main__":
    main()
