"""Weighted blends of our datasets as megatron-core GPTDatasets (the training-side reader).

Weights are sampling probabilities (``0.95 speech 0.05 text``). megatron-core builds the sample
indices (cached as ``.npy`` files keyed by an md5 of the config) and reads the data through its own
``IndexedDataset``.

Pad and EOD: SODA's vocabulary has no pad token. GPTDataset masks the loss wherever a label equals
pad, so pad must never be a real id (``<|end_of_text|>`` as pad would hide every end of document):
pad is ``vocab_size``, the first id of the TP padding range. EOD is ``<|end_of_text|>``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from megatron_soda.tokenizer.layout import SODA_LAYOUT, VocabLayout


@dataclass
class GPTTokenIds:
    """The part of a tokenizer that megatron-core's GPTDataset reads."""

    vocab_size: int
    eod: int
    pad: int

    @property
    def unique_identifiers(self) -> OrderedDict:
        # Part of the md5 key of GPTDataset's index cache.
        return OrderedDict(class_name="GPTTokenIds", vocab_size=self.vocab_size, eod=self.eod, pad=self.pad)

    @classmethod
    def from_layout(cls, layout: VocabLayout) -> "GPTTokenIds":
        return cls(vocab_size=layout.vocab_size, eod=layout.eos_id, pad=layout.vocab_size)


@dataclass
class BlendConfig:
    """A blend of dataset prefixes and how GPTDataset samples it."""

    prefixes: List[str]
    """Dataset prefixes (``.bin``/``.idx`` pairs)."""
    weights: Optional[List[float]] = None
    """Sampling probabilities, one per prefix (normalised); None weighs by size."""
    seq_length: int = 4096
    """Tokens per sample (GPTDataset reads seq_length + 1 to form the labels)."""
    seed: int = 1234
    split: str = "969,30,1"
    """Train/valid/test split of each dataset's documents."""
    cache_dir: Optional[str] = None
    """Where megatron-core caches the sample indices (``.npy``); needs an initialized torch.distributed
    process group, as in training. None: GPTDataset's default, a ``cache/`` folder beside each dataset
    (the blend's own indices are then rebuilt in memory, which is fast)."""
    reset_position_ids: bool = False
    """Restart position ids after each EOD (documents concatenated in a row stay one sequence by default)."""
    reset_attention_mask: bool = False
    """Block attention across EODs. No dense mask is built: the trainer turns EODs into document ids
    (``packed_dataset.documents_after_eod``) and attends per document, as for packed rows."""
    eod_mask_loss: bool = False
    """Mask the loss on EOD labels. False: the model learns where documents end."""
    layout: VocabLayout = field(default_factory=lambda: SODA_LAYOUT)
    packed_rows: bool = False
    """The datasets are packed rows (``tools/pack_dataset.py``): one row per sample, documents kept apart
    (``PackedRowDataset``), instead of GPTDataset's concatenated documents."""


def parse_data_path(values: Sequence[str]) -> Tuple[List[str], Optional[List[float]]]:
    """``["0.95", "speech", "0.05", "text"]`` -> (prefixes, weights); plain prefixes -> (prefixes, None)."""
    values = list(values)
    if not values:
        raise ValueError("--data-path needs at least one dataset prefix")
    try:
        float(values[0])
    except ValueError:
        return values, None
    if len(values) % 2:
        raise ValueError(f"--data-path {' '.join(values)}: expected weight/prefix pairs")
    try:
        weights = [float(w) for w in values[0::2]]
    except ValueError:
        raise ValueError(f"--data-path {' '.join(values)}: expected weight/prefix pairs") from None
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--data-path weights must be non-negative with a positive sum, got {weights}")
    return values[1::2], weights


def build_gpt_datasets(config: BlendConfig, num_samples: Tuple[int, int, int]):
    """(train, valid, test) blended datasets with at least the given numbers of samples.

    GPTDatasets, or ``PackedRowDataset``s when ``config.packed_rows``; both blend and split alike. Loss
    flags stored beside a dataset (fine-tuning data) mask its labels in either kind.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    from megatron_soda.data.indexed_dataset import validate_dataset
    from megatron_soda.data.loss_mask import has_loss_mask
    from megatron_soda.data.masked_gpt_dataset import LossMaskedGPTDataset
    from megatron_soda.data.packed_dataset import PackedRowDataset

    if config.cache_dir is not None:
        import torch.distributed

        if not torch.distributed.is_initialized():
            raise ValueError(
                "BlendConfig.cache_dir needs an initialized torch.distributed process group "
                "(megatron-core's rank-0 writes the index cache); pass cache_dir=None to build in memory"
            )
    for prefix in config.prefixes:
        if not os.path.exists(prefix + ".idx"):
            raise FileNotFoundError(f"dataset {prefix} is missing or incomplete (no {prefix}.idx)")
    weights = config.weights
    if weights is None and len(config.prefixes) > 1:
        # megatron-core reads "no weights" on a blend as one epoch of each dataset, capping the sample
        # count; weighing by size is what BlendConfig promises, so the weights are made explicit.
        weights = [float(validate_dataset(p).num_tokens) for p in config.prefixes]
    gpt_config = GPTDatasetConfig(
        random_seed=config.seed,
        sequence_length=config.seq_length,
        blend=(list(config.prefixes), weights),
        split=config.split,
        path_to_cache=config.cache_dir,
        tokenizer=GPTTokenIds.from_layout(config.layout),
        reset_position_ids=config.reset_position_ids,
        reset_attention_mask=config.reset_attention_mask,
        eod_mask_loss=config.eod_mask_loss,
        create_attention_mask=False,
    )
    _check_splits_have_documents(config, gpt_config.split_matrix, num_samples)
    # A split asked for no samples is not built at all: megatron-core would still build it, and on a
    # split without documents (a small dataset's 1-in-1000 test share) its epoch count never ends.
    gpt_config.split_matrix = [
        bounds if wanted else None for bounds, wanted in zip(gpt_config.split_matrix, num_samples)
    ]
    dataset_class = PackedRowDataset if config.packed_rows else GPTDataset
    if not config.packed_rows and any(has_loss_mask(prefix) for prefix in config.prefixes):
        dataset_class = LossMaskedGPTDataset  # GPTDataset's samples with the stored loss flags applied
    return BlendedMegatronDatasetBuilder(dataset_class, list(num_samples), lambda: True, gpt_config).build()


def samples_per_epoch(prefixes: Sequence[str], split: str, seq_length: int, packed_rows: bool) -> int:
    """Samples in one pass over the training split of every dataset: its rows when packed, else its
    tokens // ``seq_length`` (GPTDataset's count, which concatenates documents)."""
    from megatron.core.datasets.blended_megatron_dataset_config import parse_and_normalize_split

    from megatron_soda.data.loss_mask import index_arrays

    share = parse_and_normalize_split(split)[0]
    total = 0
    for prefix in prefixes:
        lengths, documents = index_arrays(prefix)
        train_documents = int(round(share * float(len(documents) - 1)))  # the builder's rounding
        if packed_rows:
            total += train_documents
        else:
            total += int(lengths[: documents[train_documents]].sum(dtype=np.int64)) // seq_length
    return total


def samples_per_dataset(dataset, start: int, stop: int):
    """How many of samples ``[start, stop)`` each blended dataset gives (one count when unblended)."""
    index = getattr(dataset, "dataset_index", None)
    if index is None:
        return np.array([stop - start])
    size, counts = len(index), np.zeros(len(dataset.datasets), dtype=np.int64)
    while start < stop:  # in slices, wrapping around the end of the index as training does
        end = min(stop, (start // size + 1) * size)
        counts += np.bincount(np.asarray(index[start % size : (end - 1) % size + 1]), minlength=len(counts))
        start = end
    return counts


def achieved_mix(dataset, num_samples: int) -> List[float]:
    """The share of each blended dataset among the first ``num_samples`` samples ([1.0] unblended)."""
    counts = samples_per_dataset(dataset, 0, num_samples)
    return (counts / max(1, counts.sum())).tolist()


def _check_splits_have_documents(config: BlendConfig, split_matrix, num_samples) -> None:
    """Refuses a split that would give a dataset no documents but is asked for samples.

    megatron-core's GPTDataset loops forever on such a split (its epoch count never reaches the
    requested tokens), so tiny datasets need this check to fail instead of hang.
    """
    from megatron_soda.data.indexed_dataset import validate_dataset

    for prefix in config.prefixes:
        report = validate_dataset(prefix)
        if not report.ok:
            raise ValueError(f"dataset {prefix} is damaged: {report}")
        for name, bounds, wanted in zip(("train", "valid", "test"), split_matrix, num_samples):
            if bounds is None or not wanted:
                continue
            # Same rounding as BlendedMegatronDatasetBuilder._build_megatron_dataset_splits.
            begin = int(round(bounds[0] * float(report.num_documents)))
            end = int(round(bounds[1] * float(report.num_documents)))
            if end <= begin:
                raise ValueError(
                    f"{prefix}: --split {config.split} gives its {name} split none of its "
                    f"{report.num_documents} documents, but {wanted} {name} samples were asked for; "
                    f"change --split or ask for 0 {name} samples"
                )
