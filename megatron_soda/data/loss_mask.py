"""Per-token loss flags (a loss mask) stored beside a token dataset, for fine-tuning on part of each example.

A dataset at ``<prefix>`` may carry a sibling IndexedDataset ``<prefix>.loss`` (uint8, one flag per token,
1 = trained) with the very same sequence lengths and document index: the flags follow the tokens through
merging, packing (same plan) and sampling, and the label at position ``t`` takes the flag of token
``t + 1``. Datasets without a sibling train every token, so masked and ordinary datasets blend.

The pair is committed together (``indexed_dataset.commit_with_vocab_record``): the flags' ``.idx`` lands
before the tokens' ``.idx`` (the dataset's commit point), and when an overwrite adds, replaces or removes
flags, the old tokens' ``.idx`` is removed first, so tokens never appear beside flags they were not
written with. This module reads and checks the pair; it never imports torch.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

LOSS_SUFFIX = ".loss"
FLAG_DTYPE = np.dtype(np.uint8)
_HEADER = 9 + 8 + 1 + 8 + 8  # magic, version, dtype code, sequence count, document count


def mask_prefix(prefix) -> str:
    """The prefix of the loss flags that belong to the dataset at ``prefix``."""
    return os.fspath(prefix) + LOSS_SUFFIX


def has_loss_mask(prefix) -> bool:
    """Whether the dataset at ``prefix`` carries loss flags (their ``.idx`` is committed)."""
    return os.path.exists(mask_prefix(prefix) + ".idx")


def index_arrays(prefix) -> Tuple[np.ndarray, np.ndarray]:
    """(sequence lengths, document index) of a committed dataset's ``.idx``, memory-mapped."""
    path = os.fspath(prefix) + ".idx"
    with open(path, "rb") as f:
        header = f.read(_HEADER)
    sequences = int(np.frombuffer(header, np.int64, 1, 18)[0])
    documents = int(np.frombuffer(header, np.int64, 1, 26)[0])
    lengths = np.memmap(path, np.int32, "r", _HEADER, (sequences,))
    document_index = np.memmap(path, np.int64, "r", _HEADER + 12 * sequences, (documents,))
    return lengths, document_index


def mismatch(prefix, tokens_report, flags_report) -> Optional[str]:
    """Why the flags at ``<prefix>.loss`` do not belong to the tokens at ``prefix`` (None: they do).

    ``*_report``: ``validate_dataset`` reports of both (structure checked already)."""
    where = mask_prefix(prefix)
    if not flags_report.ok:
        return f"loss flags {where} are damaged: {flags_report}"
    if flags_report.dtype != FLAG_DTYPE:
        return f"loss flags {where} are {flags_report.dtype}, not {FLAG_DTYPE}"
    counts = ("num_sequences", "num_documents", "num_tokens")
    if any(getattr(tokens_report, key) != getattr(flags_report, key) for key in counts):
        said = ", ".join(f"{getattr(flags_report, key)} vs {getattr(tokens_report, key)} {key[4:]}" for key in counts)
        return f"loss flags {where} do not match the tokens beside them ({said})"
    (token_lengths, token_docs), (flag_lengths, flag_docs) = index_arrays(prefix), index_arrays(where)
    if not (np.array_equal(token_lengths, flag_lengths) and np.array_equal(token_docs, flag_docs)):
        return f"loss flags {where} have other sequence lengths or documents than the tokens beside them"
    return None


def read_loss_mask(prefix) -> np.ndarray:
    """Every flag of the dataset at ``prefix``, in token order (all ones without flags)."""
    target = mask_prefix(prefix) if has_loss_mask(prefix) else None
    lengths, _ = index_arrays(prefix)
    if target is None:
        return np.ones(int(lengths.sum(dtype=np.int64)), dtype=FLAG_DTYPE)
    return np.fromfile(target + ".bin", dtype=FLAG_DTYPE)
