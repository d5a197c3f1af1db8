"""The one flag parser of every script: paddlenlp's `PdArgumentParser` over the scripts' dataclasses.

Each flag is a dataclass field (its help in `metadata["help"]`), checked in its dataclass's
`__post_init__`; parsing builds the dataclasses once. What this adds to upstream's parser:

* errors are `UserError`s naming the flag: one `error: --flag: ...` paragraph, exit 2;
* a `Choice` field parses leniently (upstream's spellings, any case: `Choice.parse`);
* field metadata for what argparse scripts had: `aliases` (other spellings, e.g. `--cpu_threads`),
  `repeatable` (a list field given once per value: `--text a --text b`), `hidden` (accepted, not
  listed in --help: a flag refused with a reason), `required`, `text` (a text, not a path: not
  valid Unicode is an error naming the flag), `remainder` (a list field that takes everything
  after `--`, as multirun.py forwards train.py's flags).

Upstream's parser is `paddlenlp/trainer/argparser.py`, standard library only, but importing
`paddlenlp.trainer` imports Paddle: the file is loaded from where paddlenlp is installed, without
importing paddlenlp, so infer.py, serve.py and client.py stay Paddle-free.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.machinery
import importlib.util
import os
import re
import types
from typing import Optional, Sequence, Union, get_type_hints

from ..choices import Choice
from ..errors import UserError, text_flag

OWN_METADATA = ("aliases", "repeatable", "hidden", "text", "remainder")


def _load_upstream_parser():
    """paddlenlp's trainer/argparser.py as a module of its own (paddlenlp itself is not imported)."""
    found = importlib.machinery.PathFinder.find_spec("paddlenlp")  # sys.path only: nothing is imported
    path = found and os.path.join(list(found.submodule_search_locations)[0], "trainer", "argparser.py")
    if not path or not os.path.isfile(path):
        raise UserError("the flag parser is paddlenlp's (trainer/argparser.py, standard library only), and paddlenlp "
                        "is not installed: `pip install -r requirements.txt` (it is not imported: no Paddle is loaded)",
                        "paddlenlp")
    spec = importlib.util.spec_from_file_location("utils.flags._paddlenlp_argparser", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_upstream = _load_upstream_parser()
strtobool = _upstream.strtobool


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The script's docstring as written; a flag's default after its help, where it has one."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or not action.option_strings or default is None or default is False or \
                default is argparse.SUPPRESS or default == []:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class _Aliased:
    """`parser.add_argument` with the field's other spellings after its own."""

    def __init__(self, parser, aliases: Sequence[str]):
        self.parser, self.aliases = parser, tuple(aliases)

    def add_argument(self, name, *more, **kwargs):
        return self.parser.add_argument(name, *more, *self.aliases, **kwargs)


def _choice_of(kind) -> Optional[type]:
    """The `Choice` enum of a field typed `SomeChoice` or `Optional[SomeChoice]`, else None."""
    if getattr(kind, "__origin__", None) is Union:
        kind = next(a for a in kind.__args__ if a is not type(None))
    return kind if isinstance(kind, type) and issubclass(kind, Choice) else None


def _item_type(kind):
    """`str` for `List[str]` / `Optional[List[str]]`."""
    if getattr(kind, "__origin__", None) is Union:
        kind = next(a for a in kind.__args__ if a is not type(None))
    return (getattr(kind, "__args__", None) or (str,))[0]


def _default(dc_field):
    if dc_field.default_factory is not dataclasses.MISSING:
        return dc_field.default_factory()
    return None if dc_field.default is dataclasses.MISSING else dc_field.default


class Parser(_upstream.PdArgumentParser):
    """PdArgumentParser whose errors are `UserError`s and that knows this tool's field metadata."""

    def __init__(self, dataclass_types, prog: str, **kwargs):
        self.remainder = None  # the field that takes what follows `--`
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(dataclass_types, prog=prog, **kwargs)
        for dtype in self.dataclass_types:
            for dc_field in dataclasses.fields(dtype):
                if dc_field.metadata.get("remainder"):
                    self.remainder = dc_field.name

    @property
    def command(self) -> str:
        return self.prog if self.prog.startswith("python") else f"python {self.prog}"

    @staticmethod
    def _parse_dataclass_field(parser, dc_field: dataclasses.Field):
        meta = dict(dc_field.metadata)
        own = {key: meta.pop(key) for key in OWN_METADATA if key in meta}
        if own.get("remainder"):
            return
        if own.get("hidden"):
            meta["help"] = argparse.SUPPRESS
        target = _Aliased(parser, own.get("aliases", ()))
        name = f"--{dc_field.name}"
        choice = _choice_of(dc_field.type)
        if choice is not None:

            def parse(text, _choice=choice):
                try:
                    return _choice.parse(text)
                except ValueError as exc:
                    raise argparse.ArgumentTypeError(str(exc)) from None

            meta.setdefault("metavar", "{" + ",".join(m.value for m in choice) + "}")
            target.add_argument(name, type=parse, default=_default(dc_field), **meta)
        elif own.get("repeatable"):
            item = text_flag if own.get("text") else _item_type(dc_field.type)
            target.add_argument(name, action="append", type=item, default=_default(dc_field), **meta)
        elif own.get("text"):
            target.add_argument(name, type=text_flag, default=_default(dc_field), **meta)
        elif dc_field.type == Optional[bool] and dc_field.default is None:
            # A flag this tool defaults from the others (--load_best_model_at_end): given bare, as in
            # upstream's commands, it means true, like paddlenlp's own boolean flags.
            target.add_argument(name, type=strtobool, nargs="?", const=True, default=None, **meta)
        else:
            plain = copy.copy(dc_field)
            plain.metadata = types.MappingProxyType(meta)
            _upstream.PdArgumentParser._parse_dataclass_field(target, plain)

    def _add_dataclass_arguments(self, dtype):
        """As upstream's, with the class's own fields first: a script's flags before the groups it shares."""
        hints = get_type_hints(dtype)
        inherited = {f.name for base in dtype.__mro__[1:] if dataclasses.is_dataclass(base)
                     for f in dataclasses.fields(base)}
        own = set(dtype.__dict__.get("__annotations__", {})) - inherited
        for dc_field in sorted(dataclasses.fields(dtype), key=lambda f: f.name not in own):
            if dc_field.init:
                dc_field.type = hints[dc_field.name]
                self._parse_dataclass_field(self, dc_field)

    def parse_known_args(self, args=None, namespace=None):
        """Unknown flags are an error before any dataclass checks its flags."""
        args = list(args or [])
        if self.remainder is not None:
            rest = None  # no `--`: the dataclass says what is missing
            if "--" in args:
                args, rest = args[:args.index("--")], args[args.index("--") + 1:]
            namespace = namespace or argparse.Namespace()
            setattr(namespace, self.remainder, rest)
        namespace, unknown = super().parse_known_args(args, namespace)
        if unknown and not (self.remainder is not None and getattr(namespace, self.remainder) is None):
            # (without `--`, the dataclass says where train.py's flags go)
            raise UserError(f"unknown flag(s) {unknown}; `{self.command} --help` lists them",
                            next((a for a in unknown if a.startswith("--")), self.prog))
        return namespace, unknown

    def error(self, message):
        flag = re.match(r"argument (--[\w-]+)", message)
        raise UserError(re.sub(r"^argument [^:]+: ", "", message), flag.group(1) if flag else self.prog)

    def parse(self, argv: Sequence[str], args_file: bool = False) -> tuple:
        """The dataclasses, built once from `argv` (each checks its flags in `__post_init__`).
        `args_file`: also read `<script>.args` beside the script, as upstream's scripts do."""
        try:
            return self.parse_args_into_dataclasses(args=list(argv), look_for_args_file=args_file)
        except ValueError as exc:  # paddlenlp's own __post_init__ rejecting a combination
            message = str(exc).replace("\n", " ")
            raise UserError(message, self.flag_in(message) or self.prog) from None

    def flag_in(self, message: str) -> Optional[str]:
        """The flag a message is about (`--name`, or a bare field name in it)."""
        named = re.search(r"--\w+", message)
        if named:
            return named.group(0)
        known = {action.dest for action in self._actions}
        for word in re.findall(r"[a-z_]+", message):
            if word in known and "_" in word:
                return f"--{word}"
        return None


def parse_flags(dataclass_types, argv: Sequence[str], prog: str, description: Optional[str] = None,
                **kwargs) -> tuple:
    """`Parser(dataclass_types, prog, description=...).parse(argv)`: a script's flags, built and checked."""
    args_file = kwargs.pop("args_file", False)
    return Parser(dataclass_types, prog=prog, description=description, **kwargs).parse(argv, args_file=args_file)
