"""One style across tools/: every tool's parser, walked without running the tool, follows the same rules.

1. Outputs. ``--output`` names the one thing a tool makes: a dataset prefix (.bin/.idx added), a file, or
   a directory that is one artifact used whole by its path (a tokenizer, which --tokenizer takes; a Hugging
   Face model, which from_pretrained takes). ``--output-dir`` names a directory the tool fills with several
   outputs of its own naming (a preprocessing job's shards and reports, detokenized clips, a corpus, the
   demo's steps). Checkpoint directories keep Megatron-LM's names, as pretraining does: ``--save`` writes
   one, ``--load`` reads one. No other output flag (--out, --output-prefix, --dest, ...).
2. Inputs. The data a tool reads (manifests, documents, datasets, token sequences, text to train on) is
   ``--input``, ``nargs="+"`` where several are allowed, never a positional argument and never another
   name (--dataset, --strings, --train-bpe, ...). What a tool works with keeps its own name: --load (a
   checkpoint), --hf (a Hugging Face model), --tokenizer, --base (a base tokenizer), --codec-path.
3. Progress. A long-running tool takes ``--progress/--no-progress`` (a ``progress: bool = True`` field), and
   ``--no-progress`` silences its bars (run here for the tools that need no codec, checkpoint or espeak-ng;
   preprocess_audio and convert_checkpoint hand the field to the library that draws their bars).
4. JSON. A tool that prints a summary takes ``--json PATH``: the summary as one JSON object written to PATH,
   or with ``--json -`` printed on stdout in place of the text.
5. Help. Every flag has help text, and ``--help`` exits 0.

``megatron_soda/flags.py``'s docstring states the same rules. Every ``tools/*.py`` has a module-level
``build_parser()`` (a ``FlagParser``, or ``FlagCommands`` for subcommands) that ``main()`` parses with, and is
listed in ``TOOLS`` with what it writes and reads: a new tool fails here until it is listed and follows them.
"""

import argparse
import importlib.util
import inspect
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from megatron_soda.flags import FlagCommands, FlagParser

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "demo_corpus"


@dataclass(frozen=True)
class Style:
    output: Optional[str]
    """The output flag (--output, --output-dir, --save for a checkpoint), None: writes nothing."""
    writes: str
    """What that is: the reason for the flag (rule 1)."""
    input: Optional[str]
    """--input takes "one" path or "several"; None: the tool reads no data (only models or programs)."""
    long_running: bool
    """Takes --progress/--no-progress (rule 3)."""
    summary: bool
    """Prints a summary, so takes --json PATH (rule 4)."""


TOOLS = {
    "preprocess_audio": Style("--output-dir", "a job: job.json, shards, rejects, report.json", "several", True, True),
    "preprocess_text": Style("--output-dir", "a job: shards, rejects, report.json", "several", True, True),
    "preprocess_sft": Style(
        "--output-dir", "a job: job.json, shards with loss flags, rejects, report.json", "several", True, True
    ),
    "rerender": Style(
        "--output-dir", "a job: job.json, shards, rejects, report.json, tokenizer/ below 8 codebooks", "one", True, True
    ),
    "pack_dataset": Style("--output", "one dataset prefix", "one", True, True),
    "merge_datasets": Style("--output", "one dataset prefix", "several", True, True),
    "evaluate": Style("--output-dir", "report.json and one <task>.items.jsonl per task", "several", True, True),
    "generate": Style("--output-dir", "generations.jsonl, one wav per audio answer, summary.json", "one", True, True),
    "detokenize": Style("--output-dir", "a .txt and .wav clips per sequence", "one", True, True),
    "build_tokenizer": Style("--output", "one tokenizer directory, used whole as --tokenizer", "several", False, True),
    "convert_checkpoint export": Style(
        "--output", "one Hugging Face model directory, used whole by from_pretrained", None, True, True
    ),
    "convert_checkpoint import": Style(
        "--save", "a checkpoint directory, Megatron-LM's --save (pretrain --load reads it)", None, True, True
    ),
    "make_demo_corpus": Style(
        "--output-dir", "a corpus: audio/, manifest.jsonl, text.jsonl, README.md", None, True, True
    ),
    # A walkthrough, not a tool run on data: its step titles and results are what it prints, as it goes.
    "demo": Style("--output-dir", "every step's outputs", "one", False, False),
    "validate_dataset": Style(None, "nothing: it reports", "several", True, True),
    # A study directory that each stage reads from and writes its own named outputs into.
    "isoflop plan": Style("--output-dir", "a study: plan.json, plan.csv, configs/<run>.yaml", None, False, True),
    "isoflop launch": Style("--output-dir", "runs/<run>/ (metrics, checkpoint, log) or slurm/", None, False, True),
    "isoflop collect": Style("--output-dir", "results.json and results.csv of the study", None, False, True),
    "isoflop fit": Style("--output-dir", "fit.json of the study", None, False, True),
    "isoflop plot": Style("--output-dir", "plots/*.png of the study", None, False, True),
    "isoflop run": Style("--output-dir", "the whole study", None, False, True),
    "isoflop demo": Style("--output-dir", "data/ and the study", "one", False, True),
}

OUTPUT_LIKE = re.compile(r"--(out|output|save|dest|destination|target)([-_][\w-]*)?$")
OUTPUT_FLAGS = {"--output", "--output-dir", "--save"}
INPUT_LIKE = {
    "--inputs",
    "--in",
    "--input-file",
    "--input-files",
    "--input-path",
    "--input-dir",
    "--input-prefix",
    "--file",
    "--files",
    "--path",
    "--paths",
    "--prefix",
    "--prefixes",
    "--dataset",
    "--datasets",
    "--data",
    "--source",
    "--sources",
    "--strings",
    "--ids",
    "--corpus",
    "--manifest",
    "--manifests",
    "--train-bpe",
    "--text",
    "--texts",
}
"""Names a data input might have been given instead of --input."""
JSON_LIKE = re.compile(r"--(json|report)([-_][\w-]*)?$")


def load_tool(name: str):
    """``tools/<name>.py`` as a module (tools/ is not a package); its main() is not run. Registered in
    sys.modules, as an imported module is: flags.py reads each field's documentation from its source."""
    spec = importlib.util.spec_from_file_location(f"_tool_style_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


MODULES = sorted(path.stem for path in (ROOT / "tools").glob("*.py"))


@pytest.fixture(scope="module")
def tools():
    return {name: load_tool(name) for name in MODULES}


@pytest.fixture(scope="module")
def parsers(tools):
    """A ``FlagParser`` per command: one per tool, one per subcommand (``convert_checkpoint export``)."""
    out = {}
    for name, module in tools.items():
        built = module.build_parser()
        if isinstance(built, FlagCommands):
            out.update({f"{name} {command}": parser for command, parser in built.commands.items()})
        else:
            assert isinstance(built, FlagParser), f"tools/{name}.py: build_parser() returns {type(built).__name__}"
            out[name] = built
    return out


def options(parser: FlagParser) -> dict:
    """Each option string of the parser's actions -> its action (help excluded)."""
    return {
        option: action
        for action in parser.parser._actions
        if not isinstance(action, argparse._HelpAction)
        for option in action.option_strings
    }


def test_every_tool_is_listed_and_builds_its_parser_without_running(tools, parsers):
    assert set(MODULES) == {name.split()[0] for name in TOOLS}, (
        "a tool in tools/ is missing from TOOLS (say what it writes and reads) or TOOLS names one that is gone"
    )
    assert set(parsers) == set(TOOLS)
    for name, module in tools.items():
        assert "build_parser()" in inspect.getsource(module.main), f"tools/{name}.py: main() must use build_parser()"


@pytest.mark.parametrize("command", sorted(TOOLS))
def test_outputs_are_output_or_output_dir(parsers, command):
    style, flags = TOOLS[command], options(parsers[command])
    outputs = {flag for flag in flags if OUTPUT_LIKE.match(flag)}
    assert outputs == ({style.output} if style.output else set()), f"{command}: output flags {sorted(outputs)}"
    assert outputs <= OUTPUT_FLAGS
    for flag in outputs:
        assert flags[flag].nargs is None and not flags[flag].option_strings[1:], f"{command} {flag}: one path"
    if "--save" in outputs:
        assert "checkpoint" in flags["--save"].help, f"{command}: --save is for checkpoint directories only"


@pytest.mark.parametrize("command", sorted(TOOLS))
def test_data_inputs_are_input(parsers, command):
    style, parser = TOOLS[command], parsers[command]
    positional = [a for a in parser.parser._actions if not a.option_strings]
    assert not positional, f"{command}: positional {[a.dest for a in positional]}; data inputs are --input"
    flags = options(parser)
    assert not INPUT_LIKE & set(flags), f"{command}: {sorted(INPUT_LIKE & set(flags))} should be --input"
    if style.input is None:
        assert "--input" not in flags
    else:
        assert flags["--input"].nargs == ("+" if style.input == "several" else None), f"{command} --input nargs"
    if "--load" in flags:
        assert "checkpoint" in flags["--load"].help, f"{command}: --load is for checkpoints only"


@pytest.mark.parametrize("command", sorted(TOOLS))
def test_long_running_tools_take_no_progress(parsers, command):
    parser = parsers[command]
    flags = options(parser)
    if TOOLS[command].long_running:
        action = flags.get("--no-progress")
        assert action is not None and action is flags.get("--progress"), f"{command}: --progress/--no-progress"
        assert isinstance(action, argparse.BooleanOptionalAction)
        assert parser.by_flag["--progress"].default is True, f"{command}: progress is on by default"


@pytest.mark.parametrize("command", sorted(TOOLS))
def test_summaries_take_json_path(parsers, command):
    parser = parsers[command]
    flags = options(parser)
    assert {flag for flag in flags if JSON_LIKE.match(flag)} <= {"--json"}, f"{command}: the one name is --json"
    if TOOLS[command].summary:
        action = flags.get("--json")
        assert action is not None, f"{command}: prints a summary, so takes --json PATH"
        assert action.metavar == "PATH" and action.nargs is None and action.type is str
        assert parser.by_flag["--json"].default is None and '"-"' in action.help
    else:
        assert "--json" not in flags


@pytest.mark.parametrize("command", sorted(TOOLS))
def test_every_flag_has_help(parsers, command):
    for action in parsers[command].parser._actions:
        text = (action.help or "").strip()
        assert text and text != argparse.SUPPRESS, f"{command} {action.option_strings or action.dest}: no help"
        assert not text.startswith("(undocumented)"), f"{command} {action.option_strings}: no field docstring"


@pytest.mark.parametrize("argv", [[name, "--help"] for name in MODULES] + [["convert_checkpoint", "export", "--help"]])
def test_help_exits_0(tools, capsys, argv):
    with pytest.raises(SystemExit) as done:
        tools[argv[0]].main(argv[1:])
    assert done.value.code == 0
    assert "--help" in capsys.readouterr().out


# ---- rules 3 and 4 at work, on the tools that need no codec, checkpoint or espeak-ng ----------------------


@pytest.fixture(scope="module")
def made(tools, tmp_path_factory):
    """A tokenizer (build_tokenizer) and one text shard (preprocess_text) of the demo corpus's text."""
    root = tmp_path_factory.mktemp("style")
    texts = root / "texts.jsonl"
    texts.write_text("".join((CORPUS / "text.jsonl").read_text(encoding="utf-8").splitlines(True)[:20]))
    argv = ["--input", texts, "--bpe-vocab-size", 300, "--output", root / "tok", "--json", root / "tok.json"]
    assert tools["build_tokenizer"].main(list(map(str, argv))) == 0
    layout = json.loads((root / "tok.json").read_text())
    argv = ["--input", texts, "--output-dir", root / "job", "--tokenizer", root / "tok", "--no-progress"]
    assert tools["preprocess_text"].main(list(map(str, argv))) == 0
    return {"root": root, "texts": texts, "tok": root / "tok", "shard": root / "job/shards/tokens_00000", **layout}


RUNS = {
    "build_tokenizer": lambda m, out: ["--input", m["texts"], "--bpe-vocab-size", 300, "--output", out],
    "preprocess_text": lambda m, out: ["--input", m["texts"], "--output-dir", out, "--tokenizer", m["tok"]],
    "merge_datasets": lambda m, out: ["--input", m["shard"], "--output", out],
    "pack_dataset": lambda m, out: ["--input", m["shard"], "--output", out, "--seq-length", 64],
    "validate_dataset": lambda m, out: ["--input", m["shard"], "--vocab-size", m["vocab_size"]],
    "detokenize": lambda m, out: (
        ["--tokenizer", m["tok"], "--input", m["shard"], "--index", 0, 1, "--no-audio"] + ["--output-dir", out]
    ),
}


def run(tools, capsys, name, argv):
    capsys.readouterr()
    assert tools[name].main(list(map(str, argv))) == 0
    return capsys.readouterr()


@pytest.mark.parametrize("name", sorted(set(RUNS) - {"build_tokenizer"}))
def test_no_progress_silences_the_bars(tools, made, capsys, name):
    assert TOOLS[name].long_running
    shown = run(tools, capsys, name, RUNS[name](made, made["root"] / f"{name}_bar") + ["--progress"])
    assert shown.err.strip(), f"{name} --progress showed nothing"
    quiet = run(tools, capsys, name, RUNS[name](made, made["root"] / f"{name}_quiet") + ["--no-progress"])
    assert quiet.err == "", f"{name} --no-progress still wrote {quiet.err!r}"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_json_summary_goes_to_a_file_or_stdout(tools, made, capsys, name):
    assert TOOLS[name].summary
    path = made["root"] / f"{name}.summary" / "out.json"
    text = run(tools, capsys, name, RUNS[name](made, made["root"] / f"{name}_file") + ["--json", path])
    assert text.out.strip(), f"{name}: with --json PATH the text summary is still printed"
    summary = json.loads(path.read_text())
    assert isinstance(summary, dict) and summary
    printed = run(tools, capsys, name, RUNS[name](made, made["root"] / f"{name}_stdout") + ["--json", "-"])
    assert json.loads(printed.out).keys() == summary.keys(), f"{name} --json -: stdout is the one JSON object"
