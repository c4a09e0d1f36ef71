"""A tiny model that knows one utterance by heart: the shared subject of the generation and evaluation
tests (conftest.py's session fixtures ``learned`` and ``our_model``)."""

import os
import shutil
import subprocess
import sys

import numpy as np

from megatron_soda.codec import CodecConfig
from megatron_soda.codec.tiny import TINY_MIMI
from megatron_soda.data.formats import Order, Utterance, render, speech_document
from megatron_soda.data.indexed_dataset import vocab_record, write_dataset
from megatron_soda.tokenizer import build_soda_tokenizer, load_soda_tokenizer, save_soda_tokenizer, train_bpe
from tests.dist import ROOT

TRANSCRIPT = "the cat sat on the mat"


def codec():
    from megatron_soda.codec.loading import load_codec

    return load_codec(CodecConfig(random_init=True, config_overrides=TINY_MIMI))


def run_tool(name, *args, expect=0):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / f"{name}.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def run_tool_here(name, *args, expect=0):
    """``tools/<name>.py``'s main() run in this process (no interpreter start, no second import of torch)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_tool_here_{name}", ROOT / "tools" / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        code = tool.main(list(map(str, args)))
    except SystemExit as exit:
        code = exit.code
    assert code == expect


def train_learned(root):
    """Trains the tiny model on one utterance (both orders, as preprocessing renders it) until it knows it,
    and exports it: ``{"root", "tokenizer", "codes", "layout"}`` with root/tok, root/utterance.wav,
    root/ckpt and root/hf."""
    import soundfile

    from tests.test_pretrain import pretrain_process

    texts = [TRANSCRIPT, "a dog ran to the park", "hello there"] * 4
    save_soda_tokenizer(build_soda_tokenizer(train_bpe(texts, vocab_size=280)), root / "tok")
    tokenizer = load_soda_tokenizer(root / "tok")
    layout = tokenizer.layout
    mimi = codec()
    t = np.arange(int(0.8 * mimi.sample_rate)) / mimi.sample_rate
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)
    soundfile.write(root / "utterance.wav", wave, mimi.sample_rate)
    codes = mimi.encode([wave])[0]
    utterance = Utterance(tokenizer.encode_text(TRANSCRIPT), codes)
    documents = [render(speech_document([utterance], order, layout), layout).ids for order in Order]
    write_dataset(
        root / "utterance",
        np.concatenate(documents * 200),
        np.array([len(d) for d in documents] * 200),
        layout.vocab_size,
        vocab=vocab_record(layout, root / "tok"),
    )
    pretrain_process(
        *("--model", "tiny", "--tokenizer", root / "tok", "--data-path", root / "utterance", "--split", "100,0,0"),
        *("--seq-length", 128, "--micro-batch-size", 4, "--global-batch-size", 4, "--train-iters", 100),
        *("--lr", 1e-2, "--lr-warmup-iters", 5, "--save", root / "ckpt", "--skip-data-validation"),
    )
    run_tool(
        "convert_checkpoint", "export", "--load", root / "ckpt", "--tokenizer", root / "tok", "--output", root / "hf"
    )
    np.save(root / "codes.tmp.npy", codes)
    os.replace(root / "codes.tmp.npy", root / "codes.npy")  # last: the mark of a finished folder
    return {"root": root, "tokenizer": tokenizer, "codes": codes, "layout": layout}


def learned_once(tmp_path_factory):
    """``train_learned`` once per test run: pytest-xdist's workers share one folder (the first trains under
    a file lock, the others read what it wrote), a plain run trains in its own."""
    from filelock import FileLock

    if "PYTEST_XDIST_WORKER" not in os.environ:
        return train_learned(tmp_path_factory.mktemp("learned"))
    root = tmp_path_factory.getbasetemp().parent / "learned"  # the run's folder, above each worker's
    with FileLock(str(root) + ".lock"):
        if not (root / "codes.npy").exists():  # written last
            shutil.rmtree(root, ignore_errors=True)  # a worker's unfinished attempt
            root.mkdir()
            return train_learned(root)
    tokenizer = load_soda_tokenizer(root / "tok")
    return {"root": root, "tokenizer": tokenizer, "codes": np.load(root / "codes.npy"), "layout": tokenizer.layout}
