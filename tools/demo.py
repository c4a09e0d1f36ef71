#!/usr/bin/env python3
"""End-to-end demo of what megatron-soda runs today, on generated data, on CPU, in seconds.

    python tools/demo.py [--output-dir demo_out]

1. writes sharded SODA-layout token datasets (interleaved speech documents and text documents,
   synthetic ids) with the C++ writer, and validates every shard against the 144,644-id vocabulary;
2. merges the speech shards and packs them into 4096-token rows that keep document boundaries;
3. reads the results back with megatron-core's IndexedDataset and samples a 0.95/0.05 speech/text
   blend with its GPTDataset, reporting the achieved mix.
"""

import argparse
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megatron_soda.data.indexed_dataset import DatasetWriter, merge_datasets, validate_dataset
from megatron_soda.data.packing import pack_dataset
from megatron_soda.data.synthetic import speech_documents, text_documents
from megatron_soda.tokenizer import SODA_LAYOUT


def write_shards(out: Path, name: str, make_documents, num_shards: int, batches: int, rng) -> list:
    prefixes = []
    for shard in tqdm(range(num_shards), desc=f"writing {name} shards", unit="shard"):
        prefix = out / "shards" / f"{name}_{shard:05d}"
        with DatasetWriter(prefix, SODA_LAYOUT.vocab_size, overwrite=True) as writer:
            for _ in range(batches):
                writer.add_documents(*make_documents(rng))
        report = validate_dataset(prefix, SODA_LAYOUT.vocab_size)
        if not report.ok:
            raise SystemExit(f"validation failed: {report}")
        prefixes.append(prefix)
    return prefixes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("demo_out"), help="where to write (replaced)")
    parser.add_argument("--speech-shards", type=int, default=4, help="number of speech shards (default 4)")
    parser.add_argument("--documents-per-shard", type=int, default=400, help="speech documents per shard")
    parser.add_argument("--seq-length", type=int, default=4096, help="packed row / sample length (default 4096)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.time()
    out = args.output_dir
    shutil.rmtree(out, ignore_errors=True)
    (out / "shards").mkdir(parents=True)
    rng = np.random.default_rng(args.seed)
    layout = SODA_LAYOUT
    print(f"SODA vocabulary: {layout.vocab_size} ids (text < {layout.base_size}, audio {layout.audio_offset}..)")
    print("data: synthetic ids in SODA's sequence layout (no audio codec yet)\n")

    batch = max(1, args.documents_per_shard // 4)
    speech = write_shards(out, "speech", lambda r: speech_documents(r, batch, layout), args.speech_shards, 4, rng)
    text = write_shards(out, "text", lambda r: text_documents(r, 500, layout), 1, 2, rng)

    merge_datasets(out / "speech", speech, progress=True)
    merged = validate_dataset(out / "speech", layout.vocab_size)
    print(f"merged: {merged}")
    plan = pack_dataset(out / "speech", out / "speech_packed", args.seq_length, seed=args.seed)
    print(f"packed: {plan.summary()}")
    print(f"        {validate_dataset(out / 'speech_packed', layout.vocab_size)}")

    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")
    logging.getLogger("megatron.core").setLevel(logging.ERROR)  # in-memory index notices
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_soda.data.gpt_blend import BlendConfig, build_gpt_datasets

    packed = IndexedDataset(str(out / "speech_packed"))
    first_row = packed.sequence_lengths[packed.document_indices[0] : packed.document_indices[1]]
    print(f"megatron-core reads {len(packed.document_indices) - 1} packed rows; row 0 cu_seqlens "
          f"{np.concatenate([[0], np.cumsum(first_row)]).tolist()}")

    config = BlendConfig([str(out / "speech"), str(text[0])], [0.95, 0.05], seq_length=args.seq_length, split="98,2,0")
    train, valid, _ = build_gpt_datasets(config, (400, 8, 0))
    share = np.bincount(train.dataset_index[:400], minlength=2) / 400
    sample = train[0]["tokens"].numpy()
    print(f"GPTDataset blend 0.95 speech / 0.05 text -> achieved {share[0]:.3f} / {share[1]:.3f} over 400 samples; "
          f"sample 0: {layout.is_audio(sample).mean():.0%} audio tokens")
    print(f"\ndemo finished in {time.time() - start:.1f} s; outputs in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
