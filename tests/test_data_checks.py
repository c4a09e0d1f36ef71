"""Datasets are checked before training: structure on every rank, token ids once, on rank 0."""

import os

import numpy as np
import pytest

from megatron_soda import _native
from megatron_soda.data.indexed_dataset import validate_tokens_once, write_dataset
from megatron_soda.tokenizer import VocabLayout
from megatron_soda.training.plan import check_datasets

VOCAB_800 = VocabLayout(base_size=780, num_codebooks=1, codebook_size=16, bos_id=0, eos_id=1)


@pytest.fixture
def scans(monkeypatch):
    """Counts the validator calls that read token ids (vocab_size > 0)."""
    calls = []
    original = _native._C.validate_dataset

    class Counting:
        def __getattr__(self, name):
            return getattr(_native._C, name)

    def validate(path, vocab_size):
        if vocab_size:
            calls.append(path)
        return original(path, vocab_size)

    import megatron_soda.data.indexed_dataset as module

    counting = Counting()
    counting.validate_dataset = validate
    monkeypatch.setattr(module, "_C", counting)
    return calls


def dataset(path, top):
    tokens = np.minimum(np.arange(100) * 10, top - 1)  # ids up to top - 1
    write_dataset(path, tokens, [40, 60], 1000, overwrite=True)
    return str(path)


def test_a_clean_scan_is_remembered_until_the_files_change(tmp_path, scans):
    prefix = dataset(tmp_path / "d", 500)
    for _ in range(3):
        assert validate_tokens_once(prefix, 1000, tmp_path / "cache").ok
    assert len(scans) == 1
    assert not validate_tokens_once(prefix, 400, tmp_path / "cache").ok  # another vocabulary: scanned again
    dataset(tmp_path / "d", 999)  # rewritten: other sizes/mtimes
    assert validate_tokens_once(prefix, 1000, tmp_path / "cache").ok and len(scans) == 3


def test_a_failed_scan_is_not_remembered(tmp_path, scans):
    prefix = dataset(tmp_path / "d", 900)
    for _ in range(2):
        report = validate_tokens_once(prefix, 800, tmp_path / "cache")
        assert not report.ok and "800" in str(report)
    assert len(scans) == 2


def test_only_rank_0_scans_token_ids(tmp_path, monkeypatch, scans):
    prefix = dataset(tmp_path / "d", 900)
    monkeypatch.setenv("MEGATRON_SODA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RANK", "1")
    check_datasets([prefix], VOCAB_800, scan_tokens=True)  # the index is fine; ids are rank 0's to check
    assert scans == []
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match=f"--data-path {prefix}: .*800"):
        check_datasets([prefix], VOCAB_800, scan_tokens=True)
    with pytest.raises(ValueError, match="index file is missing"):
        check_datasets([str(tmp_path / "absent")], VOCAB_800, scan_tokens=True)
    assert not os.path.exists(tmp_path / "cache" / "validated") or not os.listdir(tmp_path / "cache" / "validated")
