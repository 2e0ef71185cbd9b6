"""Typed config dataclasses as argparse options: the field docstrings are the `--help` text.

So help never drifts from the code: a field `tokens: int = 10**6` with the docstring below it
becomes `--tokens TOKENS  Number of tokens ... (default: 1000000)`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import re
import textwrap
import types
import typing
from typing import Any

_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmb]?)\s*$", re.IGNORECASE)
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}


def parse_count(text: str) -> int:
    """Parse counts such as 1000000, 1e6, 250k or 2M into an int."""
    match = _COUNT.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (try 1000000, 1e6, 250k or 2M)")
    value = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if value != int(value):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(value)


def field_docs(cls: type) -> dict[str, str]:
    """The string literal written under each field of a dataclass and of the dataclasses it
    inherits from (a subclass's docstring wins)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update(_own_field_docs(base))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field[Any]) -> Any:
    """A config field's default value (every config field has one)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"config field {f.name} has no default")


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    rename: dict[str, str],
    positional: tuple[str, ...] = (),
) -> None:
    """Add one option per dataclass field; `rename` maps field -> flag for list fields
    (e.g. sites -> --site, repeatable); fields in `positional` become required positional
    arguments (e.g. the feature store of `monoscope explain DB`)."""
    # argparse %-formats help text: a docstring's "5% of contexts" would break --help.
    docs = {name: text.replace("%", "%%") for name, text in field_docs(cls).items()}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = _default(f)
        flag = "--" + rename.get(f.name, f.name).replace("_", "-")
        # A config may say what a default stands for (TrainConfig: each architecture's value).
        shown = getattr(cls, "default_help", lambda name: None)(f.name)
        help_text = f"{docs.get(f.name, '')} (default: {default if shown is None else shown})"
        hint = _unwrap_optional(hints[f.name])
        if f.name in positional:
            parser.add_argument(f.name, help=docs.get(f.name, ""))
        elif hint is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
        elif typing.get_origin(hint) is list:
            metavar = rename.get(f.name, f.name).upper()
            parser.add_argument(
                flag, dest=f.name, action="append", default=None, metavar=metavar, help=help_text
            )
        else:
            kind = parse_count if hint is int else float if hint is float else str
            parser.add_argument(
                flag,
                dest=f.name,
                type=kind,
                default=default,
                choices=f.metadata.get("choices"),
                help=help_text,
            )


def _unwrap_optional(hint):
    """`int | None` -> int: an optional option parses as its type and defaults to None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return args[0] if is_union and len(args) == 1 else hint


def config_from_args(cls: type, args: argparse.Namespace):
    """Build the dataclass from parsed options (list fields left unset keep their default)."""
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        if value is not None or typing.get_origin(typing.get_type_hints(cls)[f.name]) is not list:
            values[f.name] = value
    return cls(**values)
