"""Decoding in worker processes: results in order, bounded memory, a worker crash costs one file only."""

import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from megatron_soda.data.audio_decode import CRASH_HOOK, DecodePool, DecodeTask, decode
from megatron_soda.data.audio_pipeline import preprocess_audio
from tests.test_preprocess_audio import CORPUS, config, corpus_subset, tokenizer_dir  # noqa: F401 (fixture)


def corpus_tasks(count):
    paths = sorted(str(p) for p in (CORPUS / "audio").glob("*.flac"))[:count]
    return [DecodeTask(path, None, None, 24_000, 0.1, 600.0) for path in paths]


@pytest.mark.timeout(180)
def test_a_crashing_decode_rejects_that_file_and_every_other_result_is_unchanged(monkeypatch):
    tasks = corpus_tasks(8)
    victim = tasks[3].path
    monkeypatch.setenv(CRASH_HOOK, victim.rsplit("/", 1)[-1])
    expected = [decode(t) if t.path != victim else None for t in tasks[:3]]  # in-process: before the hook fires
    pool = DecodePool(2, in_flight_per_worker=2)
    try:
        results = list(pool.map(tasks))
    finally:
        pool.close()
    assert len(results) == len(tasks)
    assert results[3].wave is None and results[3].reason == "decoder_crashed" and victim in results[3].message
    for k, result in enumerate(results):
        if k != 3:
            assert result.reason is None and result.wave.dtype == np.float32 and len(result.wave) > 0
    for k in range(3):
        assert np.array_equal(results[k].wave, expected[k].wave)


@pytest.mark.timeout(120)
def test_a_pool_that_broke_before_the_next_submission_recovers(monkeypatch):
    """A worker can die while tasks are still being submitted: those submissions fail at once."""
    tasks = corpus_tasks(5)
    monkeypatch.setenv(CRASH_HOOK, tasks[0].path.rsplit("/", 1)[-1])
    pool = DecodePool(1, in_flight_per_worker=8)
    try:
        pool._restart()
        with pytest.raises(Exception):
            pool.pool.submit(decode, tasks[0]).result()  # the worker dies: the pool is broken now
        results = list(pool.map(tasks[1:]))
    finally:
        pool.close()
    assert [r.reason for r in results] == [None] * 4 and all(len(r.wave) for r in results)


@pytest.mark.timeout(120)
def test_at_most_a_window_of_tasks_is_in_flight(monkeypatch):
    submitted = []
    original = ProcessPoolExecutor.submit

    def counting_submit(self, fn, *args, **kwargs):
        submitted.append(args[0].path)
        return original(self, fn, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", counting_submit)
    tasks = corpus_tasks(10)
    pool = DecodePool(1, in_flight_per_worker=3)
    try:
        results = pool.map(tasks)
        for taken in range(1, len(tasks) + 1):
            next(results)
            assert len(submitted) <= taken + 3
    finally:
        pool.close()
    assert submitted == [t.path for t in tasks]  # each once, in order


@pytest.mark.timeout(300)
def test_preprocessing_goes_on_past_a_file_that_kills_its_decoder(tmp_path, tokenizer_dir, monkeypatch):  # noqa: F811
    manifest, utterances, _ = corpus_subset(tmp_path, recordings=3)
    victim = json.loads(manifest.read_text().splitlines()[1])["audio"]
    monkeypatch.setenv(CRASH_HOOK, victim.rsplit("/", 1)[-1])
    report = preprocess_audio(config([manifest], tmp_path / "out", tokenizer_dir, workers=2))
    crashed = sum(1 for line in manifest.read_text().splitlines() if json.loads(line)["audio"] == victim)
    assert report["rejects"] == {"decoder_crashed": crashed}
    assert report["utterances"] == utterances - crashed
    rejects = [
        json.loads(line)
        for p in sorted((tmp_path / "out" / "shards").glob("rejects_*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    assert {r["reason"] for r in rejects} == {"decoder_crashed"} and all(
        victim in r["source"] or victim in r["message"] for r in rejects
    )
