"""Worker for tests/test_convert.py, run on every rank of a TP x PP world (gloo, CPU).

    RANK=.. WORLD_SIZE=.. MASTER_ADDR=127.0.0.1 MASTER_PORT=.. python tests/dist/convert_worker.py \
        --spec spec.json --tp 2 --pp 2

``spec.json`` (written by the test)::

    {"vocab": V, "tokens": [...], "prompt": P, "new_tokens": N, "out": "results.pt",
     "imports": [[CLI args of `tools/convert_checkpoint.py import`], ...],
     "save": [{"name": .., "shape": {ModelShape fields}, "record": "tiny" or {fields}, "dir": ..}, ...],
     "load": [{"name": .., "dir": ..}, ...]}

1. ``imports``: rank 0 runs the converter's command line (in this process, as a world of one, before
   joining the others, who wait for it), so the imported checkpoints exist when the world loads them.
2. ``save``: builds the model at TP x PP with megatron's DDP and optimizer, sets every RMSNorm weight
   to non-trivial values (random init leaves them at 1, where q/k norm or pre-/post-norm mix-ups would
   not show), and saves a training checkpoint (optimizer state included) the way pretrain does.
3. ``load``: builds the model and loads the checkpoint the way pretrain does (``load_checkpoint`` with
   the optimizer and its default flags).

For each model: full-vocabulary logits of ``tokens`` at every position, and greedy continuation of the
first ``prompt`` tokens by ``new_tokens`` (a plain loop re-running the whole sequence each step; the
generation module with a KV cache is not this test's subject). The last stage's TP rank 0 saves
``{name: {"logits": [s, padded vocab], "greedy": [ids]}}`` to ``out``.
"""

import argparse
import json
import os
import runpy
import time
import warnings
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SAVED_ITERATION = 5


def perturb_norms(chunks):
    """RMSNorm weights := 1 + 0.3 * noise, seeded by pipeline stage and name, so TP replicas agree."""
    from megatron.core import parallel_state

    stage = parallel_state.get_pipeline_model_parallel_rank()
    with torch.no_grad():
        for chunk in chunks:
            for name, param in chunk.named_parameters():
                if "norm" in name:
                    generator = torch.Generator().manual_seed(zlib.crc32(f"{stage}:{name}".encode()))
                    param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=generator))


def build(shape, tp, pp):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from megatron_soda.models.gpt import transformer_config
    from megatron_soda.training import parallel
    from megatron_soda.training.config import OptimizerConfig
    from megatron_soda.training.optimizer import build_megatron_optimizer

    config = transformer_config(shape, tensor_parallel=tp, pipeline_parallel=pp, init_method_std=0.05)
    chunks = parallel.build_model_chunks(shape, config, attention_backend="sdpa")
    model = [DistributedDataParallel(config, DistributedDataParallelConfig(), chunk) for chunk in chunks]
    return model, build_megatron_optimizer(model, OptimizerConfig(lr=1e-3))


def logits_of(model, tokens):
    """Full-vocabulary logits ``[s, padded vocab]`` of ``tokens`` ``[1, s]`` on the last stage (None elsewhere)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    captured = []

    def loss_func(output):
        captured.append(gather_from_tensor_model_parallel_region(output)[0].detach().clone())
        return output.new_zeros(()), {}

    def step(data_iterator, chunk):
        batch = next(data_iterator)
        positions = torch.arange(batch.shape[1]).unsqueeze(0)
        return chunk(batch, positions, None, labels=None), loss_func

    for chunk in model:
        chunk.eval()
    with torch.no_grad():
        get_forward_backward_func()(forward_step_func=step, data_iterator=iter([tokens]), model=model[0],
                                    num_microbatches=1, seq_length=tokens.shape[1], micro_batch_size=1,
                                    forward_only=True)
    return captured[0] if captured else None


def greedy(model, prompt, new_tokens, vocab):
    """Argmax continuation over the real vocabulary, the same on every rank."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    tokens = prompt.clone()
    for _ in range(new_tokens):
        logits = logits_of(model, tokens)
        choice = torch.zeros(1, dtype=torch.long)
        if logits is not None:
            choice[0] = logits[-1, :vocab].argmax()
        dist.broadcast(choice, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                       group=parallel_state.get_pipeline_model_parallel_group())
        tokens = torch.cat([tokens, choice.view(1, 1)], dim=1)
    return tokens[0, prompt.shape[1]:].tolist()


def run_imports(spec):
    """Rank 0 runs the imports as a world of one; the others wait for its word (a failure ends them all)."""
    done = Path(spec["out"] + ".imports")

    def tell(word):
        Path(f"{done}.tmp").write_text(word)
        os.replace(f"{done}.tmp", done)

    if int(os.environ["RANK"]) == 0:
        convert = runpy.run_path(str(ROOT / "tools" / "convert_checkpoint.py"), run_name="convert_checkpoint")["main"]
        try:
            for argv in spec["imports"]:
                assert convert(argv) == 0, f"import failed: {argv}"
        except BaseException:
            tell("failed")
            raise
        tell("ok")
        return
    deadline = time.time() + 200
    while not done.exists() and time.time() < deadline:
        time.sleep(0.1)
    if not done.exists() or done.read_text() != "ok":
        raise SystemExit("rank 0's imports failed or never finished")


def main():
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=2)
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())

    run_imports(spec)

    from megatron.core import parallel_state

    from megatron_soda.models.shape_record import shape_from_record
    from megatron_soda.training import checkpointing, parallel

    parallel.initialize(parallel.ParallelLayout(args.tp, args.pp), seed=1234)
    tokens = torch.tensor([spec["tokens"]])
    prompt = tokens[:, :spec["prompt"]]
    results = {}
    for case in spec["save"]:
        shape = shape_from_record(case["shape"], None, case["name"])
        model, optimizer = build(shape, args.tp, args.pp)
        perturb_norms(model)
        checkpointing.save_checkpoint(case["dir"], SAVED_ITERATION, model, optimizer, {"step": SAVED_ITERATION}, 0,
                                      {"model": case["record"], "padded_vocab_size": shape.padded_vocab_size()})
        results[case["name"]] = {"logits": logits_of(model, tokens),
                                 "greedy": greedy(model, prompt, spec["new_tokens"], shape.vocab_size)}
    for case in spec["load"]:
        info = checkpointing.read_checkpoint_info(case["dir"])
        shape = shape_from_record(info["extra"]["model"], spec["vocab"], case["name"])
        model, optimizer = build(shape, args.tp, args.pp)
        loaded = checkpointing.load_checkpoint(case["dir"], model, optimizer)
        assert loaded["iteration"] == info["iteration"] and not loaded["rng_restored"], loaded
        results[case["name"]] = {"logits": logits_of(model, tokens),
                                 "greedy": greedy(model, prompt, spec["new_tokens"], shape.vocab_size)}

    if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
        torch.save(results, spec["out"])
    parallel.destroy()


if __name__ == "__main__":
    main()
