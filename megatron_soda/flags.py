"""The one mechanism that turns command-line flags (and ``--config`` YAML) into dataclass configs.

Every CLI declares its settings as dataclasses, one field per setting with a docstring under it;
``FlagParser`` makes one flag per field, nested dataclasses included::

    @dataclass
    class OptimizerConfig:
        lr: float = 3e-4
        \"\"\"Peak learning rate.\"\"\"
        name: str = field(default="cautious", metadata=flag("--optimizer", choices=("adamw", "cautious")))
        \"\"\"adamw | cautious.\"\"\"

    config = FlagParser(TrainConfig, prog="pretrain").parse(argv)   # a TrainConfig

Rules, the same for every tool:
- A field ``learning_rate`` is ``--learning-rate`` unless ``flag("--lr")`` names it (Megatron-LM's
  names where Megatron-LM has the setting). Nested sections add no prefix: flag names are unique
  over the whole config, and a clash is an error when the parser is built.
- Booleans take ``--x`` and ``--no-x``; ``--help`` shows every default; abbreviations are refused
  (``--num-layers 3`` is never taken for ``--num-layers-per-virtual-pipeline-stage``).
- ``--config run.yaml`` (when the tool has it) holds the same settings, nested by section
  (``optimizer: {lr: 1e-3}``) or flat by field or flag name (``lr: 1e-3``, ``--lr: 1e-3``).
  Flags given on the command line win over the file; both win over the caller's ``defaults``
  (e.g. a recipe), which win over the dataclass defaults.
- Usage errors (unknown flag, bad value, unknown YAML key, a missing required setting) end the program
  with exit code 2 and one line naming the flag or file, as argparse does. ``check=`` runs the tool's
  own checks of the parsed config (paths, counts, combinations; ``megatron_soda.checks``) before
  any work: each ``ValueError`` it raises is such a usage error too.
- ``FlagCommands`` gives a tool subcommands (``convert_checkpoint.py export ...``), one dataclass each.
- A config may extend another (a tool adding its own flags to a library's config): inherited fields keep
  their documentation, and ``base_config`` turns the tool's config back into the library's.

The tools in ``tools/`` also share these conventions (``tests/test_tool_style.py`` checks every tool's parser,
each tool's ``build_parser()``):
- Outputs: ``--output`` names the one thing a tool makes: a dataset prefix (``.bin``/``.idx`` added), a file,
  or a directory that is one artifact, used whole by its path (a tokenizer for ``--tokenizer``, a Hugging
  Face model for ``from_pretrained``). ``--output-dir`` names a directory the tool fills with several
  outputs of its own naming (a preprocessing job's shards and reports, detokenized clips, a corpus, the
  demo's steps). Checkpoint directories keep Megatron-LM's names, as pretraining does: ``--save`` writes
  one, ``--load`` reads one.
- Inputs: the data a tool reads (manifests, documents, datasets, token sequences, text to train on) is
  ``--input``, with ``nargs="+"`` where several are allowed; never a positional argument. What a tool
  works with keeps its own name: ``--load`` (a checkpoint), ``--hf`` (a Hugging Face model),
  ``--tokenizer``, ``--base`` (a base tokenizer), ``--codec-path``.
- A long-running tool shows progress bars on stderr; ``--no-progress`` (a ``progress: bool = True``
  field) turns them off.
- A tool that prints a summary takes ``--json PATH``: the same summary as one JSON object, written to PATH,
  or with ``--json -`` printed on stdout in place of the text (``megatron_soda.tool_json``).
- Every flag has help text (its field's docstring), and ``--help`` exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

_MISSING = object()


def flag(
    name: Optional[str] = None,
    *,
    choices: Optional[Sequence[Any]] = None,
    positional: bool = False,
    nargs: Optional[str] = None,
    metavar: Optional[str] = None,
    parse: Optional[Callable[[str], Any]] = None,
    hidden: bool = False,
) -> Dict[str, Any]:
    """Field metadata saying how its flag differs from the default rule (see the module docstring).

    ``positional``: an argument without dashes (``name`` is then its metavar). ``parse``: turns the
    flag's text into the value (e.g. ``json.loads``). ``hidden``: not a flag at all (set by code).
    """
    return {
        "flag": {
            "name": name,
            "choices": choices,
            "positional": positional,
            "nargs": nargs,
            "metavar": metavar,
            "parse": parse,
            "hidden": hidden,
        }
    }


@dataclasses.dataclass(frozen=True)
class _Leaf:
    path: Tuple[str, ...]
    """Field names from the root config to this setting."""
    flag: str
    kind: Any
    """The field's type with Optional removed."""
    optional: bool
    default: Any
    doc: str
    spec: Dict[str, Any]

    @property
    def dest(self) -> str:
        return ".".join(self.path)


def _unwrap_optional(kind) -> Tuple[Any, bool]:
    if typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return kind, False


def _is_list(kind) -> bool:
    return typing.get_origin(kind) in (list, List, tuple, Tuple)


def _element(kind):
    args = typing.get_args(kind)
    return args[0] if args else str


def field_docs(cls) -> Dict[str, str]:
    """The string literal under each field of a dataclass (its documentation), whitespace folded; inherited
    fields keep their base class's."""
    docs: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object and dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls) -> Dict[str, str]:
    import ast
    import inspect
    import textwrap

    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _MISSING


def leaves(cls, path: Tuple[str, ...] = ()) -> List[_Leaf]:
    """Every setting of ``cls`` and its nested dataclass sections, in declaration order."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, optional = _unwrap_optional(hints[f.name])
        spec = dict(f.metadata.get("flag") or flag()["flag"])
        if spec["hidden"] or not f.init:
            continue
        if dataclasses.is_dataclass(kind):
            out += leaves(kind, path + (f.name,))
            continue
        name = spec["name"] or ("--" + f.name.replace("_", "-"))
        out.append(_Leaf(path + (f.name,), name, kind, optional, _default_of(f), docs.get(f.name, ""), spec))
    return out


def _caster(leaf: _Leaf) -> Callable[[str], Any]:
    if leaf.spec["parse"] is not None:
        parse = leaf.spec["parse"]

        def parsed(text: str) -> Any:  # argparse would name the function in its message, not the problem
            try:
                return parse(text)
            except (TypeError, ValueError) as error:
                raise argparse.ArgumentTypeError(f"invalid value {text!r} ({error})") from None

        return parsed
    kind = _element(leaf.kind) if _is_list(leaf.kind) else leaf.kind
    if typing.get_origin(kind) is typing.Literal:
        kind = type(typing.get_args(kind)[0])
    return kind if kind in (int, float, str) else str


def _choices(leaf: _Leaf) -> Optional[Sequence[Any]]:
    if leaf.spec["choices"] is not None:
        return leaf.spec["choices"]
    if typing.get_origin(leaf.kind) is typing.Literal:
        return typing.get_args(leaf.kind)
    return None


def _show(value: Any) -> str:
    if value is None or value is _MISSING:
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return json.dumps(value) if value else "none"
    return str(value)


def _help_text(leaf: _Leaf, doc: str) -> str:
    """The field's documentation, then "(required)" or its default (unless an unset default is explained)."""
    if leaf.default is _MISSING:
        suffix = "" if leaf.spec["positional"] else " (required)"
    elif leaf.default is None and "default" in doc.lower():
        suffix = ""  # the text says what an unset setting means
    else:
        suffix = f" (default: {_show(leaf.default)})"
    return ((doc or "(undocumented)") + suffix).replace("%", "%%")


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (``prog: error: ...``, exit 2; the flags are in ``--help``),
    and help text that needs heavy imports filled in only when help is printed."""

    lazy_help: Optional[Callable[[], None]] = None

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def format_help(self) -> str:
        if self.lazy_help is not None:
            fill, self.lazy_help = self.lazy_help, None
            fill()
        return super().format_help()


class FlagParser:
    """argparse over a dataclass config; ``parse`` returns the config (see the module docstring).

    ``help_extra``: text appended to some settings' help, by dotted path; a callable returning it is
    called only when help is printed (for text that needs heavy imports). ``check``: called with the
    parsed config; a ``ValueError`` it raises is a usage error (exit 2, its message on one line).
    ``parser``: an argparse parser to fill instead of a new one (a ``FlagCommands`` subcommand's).
    """

    def __init__(
        self,
        cls,
        *,
        prog: Optional[str] = None,
        description: Optional[str] = None,
        config_file: bool = False,
        epilog: Optional[str] = None,
        help_extra: Union[None, Dict[str, str], Callable[[], Dict[str, str]]] = None,
        check: Optional[Callable[[Any], None]] = None,
        parser: Optional[argparse.ArgumentParser] = None,
    ):
        self.cls = cls
        self.leaves = leaves(cls)
        self.config_file = config_file
        self.check = check
        self.parser = parser or _ArgumentParser(
            prog=prog,
            description=description,
            epilog=epilog,
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if config_file:
            self.parser.add_argument(
                "--config", metavar="YAML", help="YAML file of settings, nested by section or flat by name (flags win)"
            )
        seen: Dict[str, _Leaf] = {}
        groups: Dict[Tuple[str, ...], Any] = {}
        actions: List[Tuple[argparse.Action, _Leaf, str]] = []
        for leaf in self.leaves:
            if leaf.flag in seen:
                raise TypeError(f"{cls.__name__}: {leaf.dest} and {seen[leaf.flag].dest} both claim {leaf.flag}")
            seen[leaf.flag] = leaf
            section = leaf.path[:-1]
            if section not in groups:
                groups[section] = self.parser.add_argument_group(".".join(section)) if section else self.parser
            doc = leaf.doc.removeprefix(leaf.flag + ":").strip()
            extra = help_extra if isinstance(help_extra, dict) else {}
            action = self._add(groups[section], leaf, doc + ((" " + extra[leaf.dest]) if leaf.dest in extra else ""))
            actions.append((action, leaf, doc))
        if callable(help_extra):

            def fill() -> None:
                extra = help_extra()
                for action, leaf, doc in actions:
                    if leaf.dest in extra:
                        action.help = _help_text(leaf, doc + " " + extra[leaf.dest])

            if isinstance(self.parser, _ArgumentParser):
                self.parser.lazy_help = fill
            else:
                fill()
        self.by_flag = seen
        self.by_name = {leaf.path[-1]: leaf for leaf in self.leaves}

    def _add(self, group, leaf: _Leaf, doc: str) -> argparse.Action:
        required = leaf.default is _MISSING
        help_text = _help_text(leaf, doc)
        if leaf.spec["positional"]:
            return group.add_argument(
                leaf.dest,
                metavar=leaf.spec["metavar"] or leaf.flag.lstrip("-"),
                nargs=leaf.spec["nargs"] or ("+" if _is_list(leaf.kind) else None),
                type=_caster(leaf),
                help=help_text,
            )
        kwargs: Dict[str, Any] = {"dest": leaf.dest, "default": argparse.SUPPRESS, "help": help_text}
        if required and not self.config_file:  # with a --config file, ``build`` says what is missing
            kwargs["required"] = True
        if leaf.kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _caster(leaf)
            kwargs["choices"] = _choices(leaf)
            kwargs["metavar"] = leaf.spec["metavar"] or (
                None if kwargs["choices"] is not None else leaf.flag.lstrip("-").upper().replace("-", "_")
            )
            if leaf.spec["nargs"] or _is_list(leaf.kind):
                kwargs["nargs"] = leaf.spec["nargs"] or "+"
        return group.add_argument(leaf.flag, **kwargs)

    # ---- parsing -------------------------------------------------------------------------------

    def given(self, argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """The settings the command line and its ``--config`` file give, by dotted path (flags win)."""
        return self.given_by(vars(self.parser.parse_args(None if argv is None else [str(a) for a in argv])))

    def given_by(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """``given`` from argparse's parsed values (by dotted path, ``config`` the --config file)."""
        args = dict(args)
        values: Dict[str, Any] = {}
        config_path = args.pop("config", None)
        if config_path:
            values.update(self.from_yaml(config_path))
        values.update(args)
        return values

    def from_yaml(self, path: str) -> Dict[str, Any]:
        """A ``--config`` file's settings by dotted path; an unknown key or bad value exits 2 naming both."""
        import yaml

        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except OSError as error:
            self.parser.error(f"--config {path}: {error.strerror or error}")
        except yaml.YAMLError as error:
            self.parser.error(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})")
        if not isinstance(data, dict):
            self.parser.error(f"--config {path}: expected a mapping of settings, found {type(data).__name__}")
        values: Dict[str, Any] = {}
        by_dest = {leaf.dest: leaf for leaf in self.leaves}

        sections = {leaf.path[:k] for leaf in self.leaves for k in range(1, len(leaf.path))}

        def walk(node: dict, prefix: Tuple[str, ...]) -> None:
            for key, value in node.items():
                key = str(key)
                section = prefix + (key.replace("-", "_"),)
                if isinstance(value, dict) and section in sections:  # a section, even where a flag has its name
                    walk(value, section)
                    continue
                dotted = ".".join(section)
                leaf = by_dest.get(dotted) or (
                    None
                    if prefix
                    else self.by_flag.get(key if key.startswith("--") else "--" + key.replace("_", "-"))
                    or self.by_name.get(key.replace("-", "_"))
                )
                if leaf is None and isinstance(value, dict):
                    walk(value, prefix + (key.replace("-", "_"),))
                    continue
                if leaf is None:
                    self.parser.error(f"--config {path}: unknown setting {'.'.join(prefix + (key,))!r}")
                values[leaf.dest] = self._coerce(leaf, value, f"--config {path}: {key}")

        walk(data, ())
        return values

    def _coerce(self, leaf: _Leaf, value: Any, where: str) -> Any:
        """A YAML value checked against the field's type, as the flag would parse it."""
        if value is None:
            if leaf.optional:
                return None
            self.parser.error(f"{where}: may not be empty")
        try:
            if leaf.kind is bool:
                if not isinstance(value, bool):
                    raise ValueError("expected true or false")
                return value
            if isinstance(value, bool):
                raise ValueError("expected a value, not true or false")
            if _caster(leaf) is int and isinstance(value, float) and not value.is_integer():
                raise ValueError("expected a whole number")
            cast = _caster(leaf)
            if _is_list(leaf.kind) or leaf.spec["nargs"]:
                items = value if isinstance(value, list) else str(value).split()
                out = [cast(str(v)) if cast is not str else str(v) for v in items]
            else:
                out = cast(str(value)) if not isinstance(value, (int, float)) or cast is str else cast(value)
            choices = _choices(leaf)
            if choices is not None and out not in choices:
                raise ValueError(f"choose from {', '.join(map(str, choices))}")
            return out
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            self.parser.error(f"{where}: {value!r} is not valid ({error})")

    def build(self, values: Dict[str, Any], defaults: Optional[Dict[str, Any]] = None):
        """The config from settings by dotted path over ``defaults`` over the dataclass defaults."""
        merged = {**(defaults or {}), **values}
        missing = [leaf.flag for leaf in self.leaves if leaf.default is _MISSING and leaf.dest not in merged]
        if missing:
            self.parser.error(f"the following arguments are required: {', '.join(missing)}")
        return _instantiate(self.cls, merged, (), self.parser)

    def parse(self, argv: Optional[Sequence[str]] = None, defaults: Optional[Dict[str, Any]] = None):
        """The config the command line gives, checked by ``check`` (a usage error, exit 2, if it refuses)."""
        return self.checked(self.build(self.given(argv), defaults))

    def checked(self, config):
        """``config`` once ``check`` accepts it; a ``ValueError`` from ``check`` ends the program (exit 2)."""
        if self.check is not None:
            try:
                self.check(config)
            except ValueError as error:
                self.error(str(error))
        return config

    def error(self, message: str) -> None:
        """Ends the program as a usage error: one line on stderr, exit code 2."""
        self.parser.error(message)


def _instantiate(cls, values: Dict[str, Any], path: Tuple[str, ...], parser: argparse.ArgumentParser):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        dotted = ".".join(path + (f.name,))
        kind, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(kind) and not (f.metadata.get("flag") or {}).get("hidden"):
            kwargs[f.name] = _instantiate(kind, values, path + (f.name,), parser)
        elif dotted in values:
            kwargs[f.name] = values[dotted]
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:  # a required setting without a value, or the config's own refusal
        parser.error(str(error))


class FlagCommands:
    """A tool with subcommands (``tool export ...``, ``tool import ...``), each a ``FlagParser`` of its own.

    ``commands`` maps each name to ``(config class, one-line help, description, check)`` (the last two
    may be None); ``parse`` returns ``(name, config)``, the config checked as ``FlagParser.parse`` does.
    """

    def __init__(
        self,
        commands: Dict[str, Tuple[Any, str, Optional[str], Optional[Callable[[Any], None]]]],
        *,
        prog: Optional[str] = None,
        description: Optional[str] = None,
        epilog: Optional[str] = None,
    ):
        self.parser = _ArgumentParser(
            prog=prog,
            description=description,
            epilog=epilog,
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub = self.parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(commands) + "}")
        self.commands: Dict[str, FlagParser] = {}
        for name, (cls, help_text, text, check) in commands.items():
            parser = sub.add_parser(
                name,
                help=help_text,
                description=text or help_text,
                allow_abbrev=False,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            self.commands[name] = FlagParser(cls, parser=parser, check=check)

    def parse(self, argv: Optional[Sequence[str]] = None) -> Tuple[str, Any]:
        args = vars(self.parser.parse_args(None if argv is None else [str(a) for a in argv]))
        name = args.pop("command")
        command = self.commands[name]
        return name, command.checked(command.build(command.given_by(args)))


# ---- checks for ``check=``: each raises ValueError naming the flag and what to do --------------------


def json_object(text: str) -> Dict[str, Any]:
    """``parse=`` for a flag holding a JSON object (``'{"num_hidden_layers": 2}'``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error.msg} at column {error.colno}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"key\": 1}}', got {text!r}")
    return value


def as_flat_dict(config) -> Dict[str, Any]:
    """A config's settings by dotted path (for logs, metrics files and checkpoints)."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update({f"{f.name}.{k}": v for k, v in as_flat_dict(value).items()})
        else:
            out[f.name] = value
    return out


def base_config(cls, config):
    """``config`` as a ``cls``, one of its dataclass bases: a tool's config may extend a library's with flags
    of the tool's own (``--json``), which the library must not see (e.g. in a job's fingerprint)."""
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if f.init})


def usage_error(prog: str, message: str) -> int:
    """Prints ``prog: error: message`` as argparse does and returns exit code 2 (for checks after parsing)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
