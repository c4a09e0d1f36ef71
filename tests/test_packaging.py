"""Packaging rules: setup.py and the preprocessing path never import torch."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    # sys.modules["torch"] = None makes every `import torch` raise ImportError.
    prelude = "import sys; sys.modules['torch'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_setup_py_runs_without_torch():
    result = _run_without_torch("sys.argv = ['setup.py', '--name']; exec(open('setup.py').read())")
    assert result.returncode == 0, result.stderr
    assert "megatron-soda" in result.stdout


def test_writing_validating_and_packing_need_no_torch(tmp_path):
    code = f"""
import numpy as np
from megatron_soda.data.indexed_dataset import write_dataset, validate_dataset, merge_datasets
from megatron_soda.data.packing import pack_dataset
from megatron_soda.data.synthetic import speech_documents
from megatron_soda.tokenizer import SODA_LAYOUT
tokens, lengths = speech_documents(np.random.default_rng(0), 10, SODA_LAYOUT)
write_dataset('{tmp_path}/a', tokens, lengths, SODA_LAYOUT.vocab_size)
merge_datasets('{tmp_path}/m', ['{tmp_path}/a', '{tmp_path}/a'])
pack_dataset('{tmp_path}/m', '{tmp_path}/p', 4096)
assert validate_dataset('{tmp_path}/p', SODA_LAYOUT.vocab_size).ok
sys.argv = ['validate_dataset.py', '--input', '{tmp_path}']
import runpy
try:
    runpy.run_path('tools/validate_dataset.py', run_name='__main__')
except SystemExit as e:
    assert e.code == 0, e.code
print('ok')
"""
    result = _run_without_torch(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_preprocess_audio_tool_and_decode_workers_import_no_torch():
    # A spawned worker re-imports the tool as __mp_main__ and runs audio_decode: neither may load torch.
    code = """
import runpy
runpy.run_path('tools/preprocess_audio.py', run_name='__mp_main__')
import megatron_soda.data.audio_decode, megatron_soda.data.manifest, megatron_soda.codec.cli
print('ok')
"""
    result = _run_without_torch(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
