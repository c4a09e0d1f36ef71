"""Worker for tests/test_parallel.py, run on every rank: losses of fixed batches at a parallel layout.

    RANK=.. WORLD_SIZE=.. MASTER_ADDR=127.0.0.1 MASTER_PORT=.. python tests/dist/parallel_loss.py \
        --tp 2 --pp 2 (--checkpoint DIR [--save] | --fresh) [--packed] --out losses.json
"""

import argparse
import json
import os
import warnings

import torch


def batches(vocab, seq_length, micro_batch_size, num_microbatches, seed=0, packed=False):
    """Random micro-batches; ``packed`` adds document ids (3 to 6 documents per row) for packed rows."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_microbatches):
        data = torch.randint(0, vocab, (micro_batch_size, seq_length + 1), generator=generator)
        out.append(
            {
                "tokens": data[:, :-1].contiguous(),
                "labels": data[:, 1:].contiguous(),
                "loss_mask": torch.ones(micro_batch_size, seq_length),
                "position_ids": torch.arange(seq_length).expand(micro_batch_size, -1).contiguous(),
            }
        )
        if packed:
            starts = torch.zeros(micro_batch_size, seq_length, dtype=torch.long)
            for row in range(micro_batch_size):
                cuts = (
                    torch.randperm(seq_length - 1, generator=generator)[
                        : int(torch.randint(2, 6, (1,), generator=generator))
                    ]
                    + 1
                )
                starts[row, cuts] = 1
            out[-1]["document_ids"] = starts.cumsum(1)
    return out


def main():
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--vp", type=int, default=None)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--tied", action="store_true")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--checkpoint", help="where --save writes the weights and other runs load them")
    parser.add_argument("--save", action="store_true", help="initialize from the seed and save; else load")
    parser.add_argument("--fresh", action="store_true", help="layers seeded by number, as training builds them")
    parser.add_argument("--packed", action="store_true", help="packed rows (document ids, thd format)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from megatron.core import dist_checkpointing, parallel_state

    from megatron_soda.models.gpt import transformer_config
    from megatron_soda.models.presets import get_preset
    from megatron_soda.training import parallel
    from megatron_soda.training.step import forward_backward

    shape = get_preset(args.preset, tie_embeddings=args.tied, num_layers=args.layers)
    layout = parallel.ParallelLayout(args.tp, args.pp, args.vp)
    parallel.initialize(layout, seed=1234)
    config = transformer_config(
        shape, tensor_parallel=args.tp, pipeline_parallel=args.pp, virtual_pipeline_parallel=args.vp
    )
    chunks = parallel.build_model_chunks(
        shape, config, attention_backend="sdpa", init_seed=1234 if args.fresh else None
    )

    # One sharded state dict for all of this rank's chunks: dist_checkpointing checks that the
    # shards of every tensor are covered within one call.
    sharded = {f"model{i}": chunk.sharded_state_dict(prefix="") for i, chunk in enumerate(chunks)}
    if args.fresh:
        pass  # the weights as built
    elif args.save:
        os.makedirs(args.checkpoint, exist_ok=True)
        dist_checkpointing.save(sharded, args.checkpoint)
    else:
        loaded = dist_checkpointing.load(sharded, args.checkpoint)
        for i, chunk in enumerate(chunks):
            chunk.load_state_dict(loaded[f"model{i}"])

    data = batches(shape.vocab_size, seq_length=32, micro_batch_size=2, num_microbatches=4, packed=args.packed)
    results = forward_backward(
        chunks, data, seq_length=32, micro_batch_size=2, forward_only=bool(os.environ.get("FORWARD_ONLY"))
    )
    losses = [r["lm loss"] for r in results]
    if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(losses, f)
    parallel.destroy()


if __name__ == "__main__":
    main()
