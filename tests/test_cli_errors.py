"""Bad invocations of every CLI are refused up front: exit code 2, a short stderr without a traceback that
names the flag or file, and nothing written.

Each case runs its tool as a subprocess, as a user would (``python tools/x.py ...``, ``python -m
megatron_soda.pretrain ...``). The selected cases run in parallel, once per session, from one fixture.
"""

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from megatron_soda.checks import check_at_least
from megatron_soda.data.indexed_dataset import write_dataset
from megatron_soda.flags import FlagCommands, FlagParser

ROOT = Path(__file__).resolve().parents[1]
MAX_MESSAGE_LINES = 2
"""Lines of stderr besides Python warnings and log records of imported libraries (megatron-core's import-time
notices on a machine without Transformer Engine): the error itself, never a traceback."""
NOISE = re.compile(r"\s*$|\S+:\d+: \w*Warning: |\s+warnings\.warn\(|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING) ")
WORKERS = (os.cpu_count() or 1) + 1
"""Subprocesses at a time (they spend part of their start reading files)."""


class Paths:
    """What the invocations point at, under one temporary directory (``{name}`` in a case's arguments)."""

    def __init__(self, root: Path):
        self.root = root
        self.file = root / "a_file.txt"
        self.file.write_text("not a directory\n")
        self.empty = root / "empty_dir"
        self.empty.mkdir()
        self.tokenizer = root / "tokenizer"  # enough for the up-front checks (they load nothing)
        self.tokenizer.mkdir()
        (self.tokenizer / "tokenizer.json").write_text("{}")
        self.manifest = root / "manifest.jsonl"
        self.manifest.write_text("")
        self.texts = root / "texts.jsonl"
        self.texts.write_text('{"text": "hello"}\n')
        self.dataset = root / "data"
        write_dataset(self.dataset, np.arange(20), [8, 12], 100)
        self.damaged = root / "damaged"
        write_dataset(self.damaged, np.arange(20), [8, 12], 100)
        with open(f"{self.damaged}.bin", "r+b") as f:
            f.truncate(8)
        self.checkpoint = root / "ckpt"  # looks like a save directory to the up-front checks
        (self.checkpoint / "iter_0000001").mkdir(parents=True)
        (self.checkpoint / "latest_checkpointed_iteration.txt").write_text("1\n")
        self.hf = root / "hf_in"  # passes the up-front checks (plan_import reads it)
        self.hf.mkdir()
        (self.hf / "config.json").write_text("{}")
        self.yaml = root / "run.yaml"
        self.yaml.write_text("lrr: 0.1\n")
        self.out = root / "out"
        """Never created: every case is refused before it writes anything."""

    def format(self, arg: str) -> str:
        return arg.format(**{name: str(value) for name, value in vars(self).items()})


def tool(name):
    return [sys.executable, str(ROOT / "tools" / f"{name}.py")]


PRETRAIN = [sys.executable, "-m", "megatron_soda.pretrain"]
CONVERT = tool("convert_checkpoint")
PA = tool("preprocess_audio")
PT = tool("preprocess_text")
PACK = tool("pack_dataset")
MERGE = tool("merge_datasets")
VALIDATE = tool("validate_dataset")
DETOKENIZE = tool("detokenize")
BUILD_TOKENIZER = tool("build_tokenizer")

# (id, command, arguments, expected exit code, texts stderr must hold, extra environment)
CASES = []


def case(id_, command, args, expected, *words, code=2, env=None):
    CASES.append((id_, command, args.split() if isinstance(args, str) else args, code, [expected, *words], env or {}))


AUDIO = "--input {manifest} --output-dir {out}/speech --tokenizer {tokenizer}"
case(
    "audio-missing-manifest",
    PA,
    "--input {root}/nope.jsonl --output-dir {out} --tokenizer {tokenizer}",
    "--input",
    "{root}/nope.jsonl",
)
case(
    "audio-output-dir-is-a-file",
    PA,
    "--input {manifest} --output-dir {file} --tokenizer {tokenizer}",
    "--output-dir",
    "{file}",
    "is a file",
)
case(
    "audio-tokenizer-missing",
    PA,
    "--input {manifest} --output-dir {out} --tokenizer {root}/tok",
    "--tokenizer",
    "{root}/tok",
    "tools/build_tokenizer.py",
)
case(
    "audio-tokenizer-without-json",
    PA,
    "--input {manifest} --output-dir {out} --tokenizer {empty}",
    "--tokenizer",
    "{empty}",
    "tokenizer.json",
)
case("audio-documents-per-shard-0", PA, AUDIO + " --documents-per-shard 0", "--documents-per-shard")
case("audio-workers-negative", PA, AUDIO + " --workers -1", "--workers", ">= 0")
case("audio-workers-not-a-number", PA, AUDIO + " --workers two", "--workers", "'two'")
case("audio-min-above-max-seconds", PA, AUDIO + " --min-seconds 5 --max-seconds 1", "--max-seconds", "--min-seconds")
case("audio-probability-above-1", PA, AUDIO + " --text-first-probability 1.5", "--text-first-probability")
case("audio-negative-document-seconds", PA, AUDIO + " --max-document-seconds -1", "--max-document-seconds")
case("audio-codec-config-not-json", PA, AUDIO.split() + ["--codec-config", "{{bad"], "--codec-config")
case("audio-unknown-codec", PA, AUDIO + " --codec wav", "--codec", "'wav'")
case("audio-abbreviated-flag", PA, AUDIO + " --documents 5", "--documents")
case("audio-tokenizer-flag-missing", PA, "--input {manifest} --output-dir {out}", "--tokenizer", "required")

TEXT = "--input {texts} --output-dir {out}/text --tokenizer {tokenizer}"
case(
    "text-missing-input",
    PT,
    "--input {root}/nope.jsonl --output-dir {out} --tokenizer {tokenizer}",
    "--input",
    "{root}/nope.jsonl",
)
case(
    "text-input-is-a-directory",
    PT,
    "--input {empty} --output-dir {out} --tokenizer {tokenizer}",
    "--input",
    "{empty}",
    "is a directory",
)
case(
    "text-output-dir-is-a-file",
    PT,
    "--input {texts} --output-dir {file} --tokenizer {tokenizer}",
    "--output-dir",
    "{file}",
)
case(
    "text-tokenizer-missing",
    PT,
    "--input {texts} --output-dir {out} --tokenizer {root}/tok",
    "--tokenizer",
    "{root}/tok",
)
case("text-documents-per-shard-0", PT, TEXT + " --documents-per-shard 0", "--documents-per-shard")
case("text-empty-text-key", PT, TEXT.split() + ["--text-key", ""], "--text-key")
case("text-input-flag-missing", PT, "--output-dir {out} --tokenizer {tokenizer}", "--input", "required")

case("pack-missing-input", PACK, "--input {root}/nope --output {out}/p", "--input", "{root}/nope")
case("pack-input-with-suffix", PACK, "--input {dataset}.bin --output {out}/p", "--input", "without .bin")
case("pack-output-exists", PACK, "--input {dataset} --output {damaged}", "--output", "--overwrite")
case("pack-output-is-input", PACK, "--input {dataset} --output {dataset} --overwrite", "--output", "--input")
case("pack-seq-length-0", PACK, "--input {dataset} --output {out}/p --seq-length 0", "--seq-length")
case("pack-output-is-a-directory", PACK, "--input {dataset} --output {empty}/", "--output")
case("pack-output-under-a-file", PACK, "--input {dataset} --output {file}/p", "--output", "cannot create")

case("merge-missing-input", MERGE, "--input {root}/nope --output {out}/m", "--input", "{root}/nope")
case("merge-nothing-under-directory", MERGE, "--input {empty} --output {out}/m", "no datasets found", "{empty}")
case("merge-output-exists", MERGE, "--input {dataset} --output {damaged}", "--output", "--overwrite")
case("merge-output-is-input", MERGE, "--input {dataset} --output {dataset} --overwrite", "--output", "input")
case("merge-output-with-suffix", MERGE, "--input {dataset} --output {out}/m.idx", "--output", ".idx")
case("merge-output-flag-missing", MERGE, "--input {dataset}", "--output", "required")
case("merge-input-flag-missing", MERGE, "--output {out}/m", "--input", "required")
case("merge-json-is-a-directory", MERGE, "--input {dataset} --output {out}/m --json {empty}", "--json", "{empty}")

case("validate-missing-path", VALIDATE, "--input {root}/nope", "--input", "{root}/nope")
case("validate-nothing-under-directory", VALIDATE, "--input {empty}", "no datasets found")
case("validate-vocab-size-0", VALIDATE, "--input {dataset} --vocab-size 0", "--vocab-size")
case("validate-vocab-size-not-a-number", VALIDATE, "--input {dataset} --vocab-size many", "--vocab-size")
case("validate-bin-given", VALIDATE, "--input {dataset}.bin", "{dataset}.bin", "prefix")
case("validate-damaged-exits-1", VALIDATE, "--input {damaged}", "DAMAGED", "{damaged}.bin", code=1)
case("validate-positional-path", VALIDATE, "{dataset}", "--input", "required")

DETOK = "--tokenizer {tokenizer} --no-audio"
STRINGS = "--input {texts} --input-format strings"
case(
    "detok-tokenizer-missing",
    DETOKENIZE,
    "--tokenizer {root}/tok --input {texts} --input-format strings --no-audio",
    "--tokenizer",
    "{root}/tok",
)
case("detok-no-input", DETOKENIZE, DETOK, "--input", "required")
case("detok-file-read-as-a-dataset", DETOKENIZE, DETOK + " --input {texts}", "--input", "{texts}", "--input-format")
case("detok-unknown-input-format", DETOKENIZE, DETOK + " --input {texts} --input-format csv", "--input-format", "'csv'")
case("detok-dataset-missing", DETOKENIZE, DETOK + " --input {root}/nope", "--input", "{root}/nope")
case(
    "detok-strings-missing",
    DETOKENIZE,
    DETOK + " --input {root}/nope.txt --input-format strings",
    "--input",
    "{root}/nope.txt",
)
case("detok-index-without-dataset", DETOKENIZE, DETOK + " " + STRINGS + " --index 1", "--index")
case("detok-negative-index", DETOKENIZE, DETOK + " --input {dataset} --index -1", "--index")
case("detok-output-dir-is-a-file", DETOKENIZE, DETOK + " " + STRINGS + " --output-dir {file}", "--output-dir", "{file}")
case(
    "detok-codec-without-weights",
    DETOKENIZE,
    "--tokenizer {tokenizer} " + STRINGS + " --output-dir {out}",
    "--codec-path",
    "--codec-random-init",
)
case(
    "detok-bandwidth-for-mimi",
    DETOKENIZE,
    "--tokenizer {tokenizer} " + STRINGS + " --output-dir {out} --codec-random-init --bandwidth 6",
    "--bandwidth",
)
case(
    "detok-bad-device",
    DETOKENIZE,
    "--tokenizer {tokenizer} " + STRINGS + " --output-dir {out} --codec-random-init --device gpu7",
    "--device",
    "gpu7",
)

BUILD = "--output {out}/tok"
case("build-no-base", BUILD_TOKENIZER, BUILD, "--base", "--input")
case("build-both-bases", BUILD_TOKENIZER, BUILD + " --base {file} --input {texts}", "--base", "--input")
case("build-base-missing", BUILD_TOKENIZER, BUILD + " --base {root}/llama.json", "--base", "{root}/llama.json")
case("build-base-directory-without-json", BUILD_TOKENIZER, BUILD + " --base {empty}", "--base", "tokenizer.json")
case("build-base-not-a-tokenizer", BUILD_TOKENIZER, BUILD + " --base {file}", "--base", "{file}")
case(
    "build-train-file-missing",
    BUILD_TOKENIZER,
    BUILD + " --input {root}/nope.txt",
    "--input",
    "{root}/nope.txt",
)
case("build-bpe-vocab-too-small", BUILD_TOKENIZER, BUILD + " --input {texts} --bpe-vocab-size 10", "--bpe-vocab-size")
case("build-codebooks-0", BUILD_TOKENIZER, BUILD + " --input {texts} --num-codebooks 0", "--num-codebooks")
case("build-output-is-a-file", BUILD_TOKENIZER, "--input {texts} --output {file}", "--output", "{file}")

EXPORT = "export --load {checkpoint} --output {out}/hf"
case("convert-no-command", CONVERT, "", "export", "import")
case("export-load-missing", CONVERT, "export --load {root}/nockpt --output {out}/hf", "--load", "{root}/nockpt")
case(
    "export-load-without-checkpoints",
    CONVERT,
    "export --load {empty} --output {out}/hf",
    "--load",
    "{empty}",
    "no checkpoint",
)
case("export-load-is-a-file", CONVERT, "export --load {file} --output {out}/hf", "--load", "{file}")
case(
    "export-output-is-a-file", CONVERT, "export --load {checkpoint} --output {file}", "--output", "{file}", "is a file"
)
case("export-output-exists", CONVERT, "export --load {checkpoint} --output {empty}", "--output", "--overwrite")
case("export-dtype-nonsense", CONVERT, EXPORT + " --dtype fp12", "--dtype", "'fp12'")
case("export-iteration-absent", CONVERT, EXPORT + " --iteration 7", "--iteration 7")
case("export-tokenizer-missing", CONVERT, EXPORT + " --tokenizer {root}/tok", "--tokenizer", "{root}/tok")
case("export-bad-shard-size", CONVERT, EXPORT + " --max-shard-size lots", "--max-shard-size")
IMPORT = "import --hf {hf} --save {out}/ckpt"
case("import-hf-missing", CONVERT, "import --hf {root}/nohf --save {out}/ckpt", "--hf", "{root}/nohf")
case("import-hf-without-config", CONVERT, "import --hf {empty} --save {out}/ckpt", "--hf", "{empty}", "config.json")
case("import-save-is-a-file", CONVERT, "import --hf {hf} --save {file}", "--save", "{file}")
case("import-tp-0", CONVERT, IMPORT + " --tensor-model-parallel-size 0", "--tensor-model-parallel-size")
case("import-abbreviated-flag", CONVERT, IMPORT + " --tensor-model 2", "--tensor-model")

TRAIN = "--train-iters 2 --lr-decay-style constant"
case("pretrain-unknown-model", PRETRAIN, "--model soda-9b --dry-run", "--model", "soda-9b")
case("pretrain-tokenizer-missing", PRETRAIN, "--tokenizer {root}/tok --dry-run", "--tokenizer", "{root}/tok")
case(
    "pretrain-save-is-a-file", PRETRAIN, "--model tiny --data-path {dataset} --save {file} " + TRAIN, "--save", "{file}"
)
case("pretrain-load-is-a-file", PRETRAIN, "--load {file} --dry-run", "--load", "{file}")
case("pretrain-load-without-checkpoints", PRETRAIN, "--load {empty} --dry-run", "--load", "{empty}")
case(
    "pretrain-data-path-missing",
    PRETRAIN,
    "--model tiny --data-path {root}/nodata " + TRAIN,
    "--data-path",
    "{root}/nodata",
)
case(
    "pretrain-global-batch-not-divisible",
    PRETRAIN,
    "--global-batch-size 7 --micro-batch-size 2 --dry-run",
    "--global-batch-size",
    "--micro-batch-size",
)
case(
    "pretrain-tp-does-not-divide-heads",
    PRETRAIN,
    "--num-layers 2 --hidden-size 48 --num-attention-heads 3 --tensor-model-parallel-size 2 --train-iters 2 --dry-run",
    "--tensor-model-parallel-size",
    "heads",
    env={"WORLD_SIZE": "2"},
)
case("pretrain-abbreviated-flag", PRETRAIN, "--num-layers-per 3", "--num-layers-per")
case("pretrain-finetune-without-load", PRETRAIN, "--finetune --dry-run", "--finetune", "--load")
case("pretrain-config-missing", PRETRAIN, "--config {root}/run2.yaml", "--config", "{root}/run2.yaml")
case("pretrain-config-unknown-key", PRETRAIN, "--config {yaml}", "--config", "{yaml}", "lrr")
case(
    "pretrain-seq-length-beyond-positions",
    PRETRAIN,
    "--model tiny --seq-length 100000 --train-iters 2 --dry-run",
    "--seq-length",
    "100000",
)
case("pretrain-micro-batch-0", PRETRAIN, "--micro-batch-size 0 --dry-run", "--micro-batch-size")
case("pretrain-lr-not-a-number", PRETRAIN, "--lr fast", "--lr", "'fast'")

IDS = [c[0] for c in CASES]
assert len(set(IDS)) == len(IDS), "case ids must be unique"


def _run(paths: Paths, command, args, env):
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    environment.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [*command, *map(paths.format, args)], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    """Each case's result, by id, run once: every selected case starts at once, in parallel (a module's tests
    share one pytest-xdist worker, conftest.py). At the end: none wrote anything."""
    paths = Paths(tmp_path_factory.mktemp("cli"))
    before = sorted(paths.root.rglob("*"))
    cases = dict(zip(IDS, CASES))
    futures = {}
    with ThreadPoolExecutor(WORKERS) as pool:

        def start(case_id):
            if case_id not in futures:
                _, command, args, _, _, env = cases[case_id]
                futures[case_id] = pool.submit(_run, paths, command, args, env)
            return futures[case_id]

        for item in request.session.items:
            case_id = getattr(getattr(item, "callspec", None), "params", {}).get("case_id")
            if item.module.__name__ == __name__ and case_id in cases:
                start(case_id)
        yield paths, lambda case_id: start(case_id).result()
    assert sorted(paths.root.rglob("*")) == before, "a refused invocation wrote something"


@pytest.mark.parametrize("case_id", IDS)
def test_bad_invocation_is_refused_up_front_naming_the_flag(results, case_id):
    paths, result_of = results
    _, command, args, code, words, _ = CASES[IDS.index(case_id)]
    result = result_of(case_id)
    stderr = result.stderr
    shown = f"$ {' '.join(command[1:] + [paths.format(a) for a in args])}\nexit {result.returncode}\n{stderr[-3000:]}"
    assert result.returncode == code, shown
    assert "Traceback" not in stderr, shown
    assert len([line for line in stderr.splitlines() if not NOISE.match(line)]) <= MAX_MESSAGE_LINES, shown
    for word in words:
        assert paths.format(word) in stderr, f"{word!r} not named\n{shown}"


def test_help_shows_every_flag_with_help_and_defaults():
    """--help of every tool: each flag has help text, and settings that have a default show it."""
    tools = [
        "preprocess_audio",
        "preprocess_text",
        "pack_dataset",
        "merge_datasets",
        "validate_dataset",
        "detokenize",
        "build_tokenizer",
        "make_demo_corpus",
        "demo",
    ]
    commands = [tool(name) + ["--help"] for name in tools]
    commands += [CONVERT + ["export", "--help"], CONVERT + ["import", "--help"]]
    with ThreadPoolExecutor(WORKERS) as pool:
        runs = list(
            pool.map(lambda c: subprocess.run(c, cwd=ROOT, capture_output=True, text=True, timeout=120), commands)
        )
    for command, run in zip(commands, runs):
        assert run.returncode == 0, run.stderr
        text = " ".join(run.stdout.split())
        assert "(undocumented)" not in text, command
        assert "(default:" in text and "-h, --help" in text, command
    audio = " ".join(runs[0].stdout.split())
    for flag in (
        "--codec-path",
        "--codec-random-init",
        "--codec-config",
        "--codec-seed",
        "--num-codebooks",
        "--bandwidth",
        "--device",
        "--codec-batch-seconds",
        "--no-progress",
        "--overwrite",
    ):
        assert flag in audio, flag
    assert "--documents-per-shard DOCUMENTS_PER_SHARD documents per output shard" in audio
    assert "(default: 1000)" in audio


# ---- the flags.py mechanisms the tools rely on, in-process ----------------------------------------------


@dataclass
class _Job:
    output: str
    """where to write."""
    count: int = 1
    """how many."""

    def check(self) -> None:
        check_at_least("--count", self.count, 1)


def test_required_flags_and_checks_are_one_line_usage_errors(capsys):
    parser = FlagParser(_Job, prog="job", check=_Job.check)
    assert parser.parse(["--output", "x", "--count", "3"]) == _Job("x", 3)
    for argv, message in (
        (["--count", "2"], "job: error: the following arguments are required: --output"),
        (["--output", "x", "--count", "0"], "job: error: --count must be >= 1, got 0"),
    ):
        with pytest.raises(SystemExit) as done:
            parser.parse(argv)
        assert done.value.code == 2 and capsys.readouterr().err == message + "\n"


def test_subcommands_parse_into_their_own_dataclass(capsys):
    commands = FlagCommands(
        {"run": (_Job, "run a job", None, _Job.check), "other": (_Job, "the same", None, None)}, prog="tool"
    )
    assert commands.parse(["other", "--output", "y", "--count", "0"]) == ("other", _Job("y", 0))
    with pytest.raises(SystemExit) as done:
        commands.parse(["run", "--output", "y", "--count", "0"])
    assert done.value.code == 2 and capsys.readouterr().err == "tool run: error: --count must be >= 1, got 0\n"


def test_help_text_given_by_a_callable_is_made_only_for_help(capsys):
    calls = []
    parser = FlagParser(_Job, prog="job", help_extra=lambda: calls.append(1) or {"count": "(at most 9)"})
    parser.parse(["--output", "x"])
    assert calls == []
    with pytest.raises(SystemExit):
        parser.parse(["--help"])
    assert calls == [1] and "how many. (at most 9) (default: 1)" in " ".join(capsys.readouterr().out.split())
