"""The documentation stands on its own: nothing cites notes outside the repository, every ``docs/<name>.md``
that something cites exists, and the relative links inside ``docs/`` lead somewhere."""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OWN_DOCS = ("megatron_soda", "tools", "tests", "bench", "examples", "docs", "README.md")
"""Where the project's own prose lives: code docstrings and comments, scripts, results, docs."""
OUTSIDE_NOTES = re.compile(r"\b(?:SODA|DESIGN)\.md\b")
"""The recipe and design notes the project was started from, which users do not have."""
DOCS_PATH = re.compile(r"(?<![\w.-])docs/(?:[\w.-]+/)*[\w.-]+\.md\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
SKIP_DIRS = {".git", ".venv", "build", "dist", "demo_out", "__pycache__", ".pytest_cache", "node_modules"}
MAX_BYTES = 2 << 20


def repository_files():
    """The repository's files: git's tracked and not-ignored ones, or (outside a git checkout) a walk."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        files = [ROOT / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        files = []
        for directory, subdirs, names in os.walk(ROOT):
            subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            files.extend(Path(directory, name) for name in names)
    return sorted(path for path in files if path.is_file())


def read_text(path):
    """The file as text, or None for binary, undecodable or large files (audio, weights, datasets)."""
    if path.stat().st_size > MAX_BYTES:
        return None
    raw = path.read_bytes()
    if b"\0" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


@pytest.fixture(scope="module")
def texts():
    found = {}
    for path in repository_files():
        text = read_text(path)
        if text is not None:
            found[path.relative_to(ROOT).as_posix()] = text
    return found


def own(name):
    return any(name == top or name.startswith(top + "/") for top in OWN_DOCS)


def test_the_docs_exist():
    for name in ("recipe.md", "design.md"):
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"


def test_nothing_cites_notes_outside_the_repository(texts):
    citations = [
        f"{name}:{number}: {line.strip()}"
        for name, text in texts.items()
        if own(name)
        for number, line in enumerate(text.splitlines(), 1)
        if OUTSIDE_NOTES.search(line)
    ]
    assert not citations, "cite docs/recipe.md or docs/design.md instead:\n" + "\n".join(citations)


def test_every_cited_docs_page_exists(texts):
    missing = sorted(
        f"{name}: {cited}"
        for name, text in texts.items()
        for cited in set(DOCS_PATH.findall(text))
        if not (ROOT / cited).is_file()
    )
    assert not missing, "cited pages that do not exist:\n" + "\n".join(missing)


def anchors(text):
    """The anchors of a Markdown page's headings, as GitHub makes them."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_links_inside_the_docs_lead_somewhere(texts):
    broken = []
    for name, text in texts.items():
        if not (name.startswith("docs/") and name.endswith(".md")):
            continue
        for target in MARKDOWN_LINK.findall(text):
            path, _, anchor = target.partition("#")
            if re.match(r"[a-z][a-z0-9+.-]*:", path):  # a URL
                continue
            linked = (ROOT / name).parent.joinpath(path) if path else ROOT / name
            if not linked.exists():
                broken.append(f"{name}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text(encoding="utf-8")):
                broken.append(f"{name}: {target} (no such heading)")
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def _cli_sections():
    """docs/cli.md's sections: (commands named in the heading, flags named in the body)."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for block in text.split("\n### ")[1:]:
        heading, _, body = block.partition("\n")
        names = re.findall(r"`([^`]+)`", heading)
        tool = re.match(r"tools/(\w+)\.py(?: (\w+))?$", names[0])
        if tool is None:
            commands = ["pretrain"]
        else:
            commands = [f"{tool.group(1)} {sub}".strip() for sub in [tool.group(2) or "", *names[1:]]]
        yield commands, set(re.findall(r"(--[a-z][\w-]*)", body))


def test_the_cli_reference_covers_every_command_and_names_only_real_flags():
    from megatron_soda.flags import FlagCommands
    from megatron_soda.training.plan import train_flag_parser
    from tests.test_tool_style import MODULES, TOOLS, load_tool

    def flags_of(parser):
        return {option for action in parser.parser._actions for option in action.option_strings}

    parsers = {"pretrain": flags_of(train_flag_parser("pretrain", None))}
    for name in MODULES:
        built = load_tool(name).build_parser()
        if isinstance(built, FlagCommands):
            parsers.update({f"{name} {command}": flags_of(p) for command, p in built.commands.items()})
        else:
            parsers[name] = flags_of(built)
    documented = set()
    for commands, flags in _cli_sections():
        assert all(command in parsers for command in commands), f"docs/cli.md names unknown commands {commands}"
        documented.update(commands)
        known = set().union(*(parsers[command] for command in commands))
        assert flags <= known, f"docs/cli.md, {commands}: no such flags {sorted(flags - known)}"
    assert documented == set(TOOLS) | {"pretrain"}, sorted((set(TOOLS) | {"pretrain"}) ^ documented)
