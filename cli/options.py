"""What the commands share: the options that reach the service, and a table per command
from the API's fields to the command's own parameters.

A command declares its table once (``FieldMap``): the request body is built from it, and an
error the service (or the advisor) reports about a field is shown under the flag the user
typed. The flags themselves are read from the running command's options (its ``typer.Context``),
so renaming a flag cannot leave an error naming the old one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import typer

DEFAULT_URL = "http://127.0.0.1:8000"

UrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="LORACLE_URL",
        help="The loracle service (env LORACLE_URL)",
        show_default=True,
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="LORACLE_API_KEY",
        help="API key (env LORACLE_API_KEY; `loracle keys create` makes one)",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer")]


class FieldMap:
    """One command's table: API field (dotted) -> the parameter(s) that give it.

    Entries naming one parameter build the request body (`body`); an entry naming a tuple of
    parameters (``profile.hardware`` is ``--gpu`` or ``--gpu-memory``) serves errors only. An
    error about a field under an entry (``model.config.vocab_size`` under ``model``) is shown
    under that entry's flag with the rest of the path; a field with no entry keeps its API name.
    """

    def __init__(self, table: Mapping[str, str | tuple[str, ...]]) -> None:
        self.table = dict(table)

    def body(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The nested request body from parameter values; None means "not given"."""
        out: dict[str, Any] = {}
        for field, param in self.table.items():
            if not isinstance(param, str) or values.get(param) is None:
                continue
            *parents, leaf = field.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = values[param]
        return out

    def flag(self, field: str, ctx: typer.Context) -> str:
        """How the user of command ``ctx`` names ``field``: its flag (or argument), else the
        API's name."""
        flags = _flags(ctx)
        parts = field.split(".")
        for cut in range(len(parts), 0, -1):
            params = self.table.get(".".join(parts[:cut]))
            if params is None:
                continue
            names = [flags.get(p) for p in ((params,) if isinstance(params, str) else params)]
            shown = "/".join(n for n in names if n)
            if not shown:
                break
            rest = ".".join(parts[cut:])
            return f"{shown} ({rest})" if rest else shown
        return field

    def say(self, text: str, ctx: typer.Context) -> str:
        """``text`` with each whole API field name of the table replaced by its flag."""
        names = sorted((f for f in self.table if "." in f), key=len, reverse=True)
        if not names:
            return text
        pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, names)) + r")(?![\w])")
        return pattern.sub(lambda m: self.flag(m.group(1), ctx), text)


def _flags(ctx: typer.Context) -> dict[str, str]:
    """Parameter name -> how the user of the command writes it: an option's long flag, an
    argument's name in capitals (as the command's usage line shows it)."""
    out = {}
    for p in ctx.command.params:
        if p.name is None:
            continue
        if p.param_type_name == "option":
            out[p.name] = max(p.opts, key=len)
        else:
            out[p.name] = p.name.upper()
    return out


def split_list(value: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def target_modules(value: str | None) -> str | list[str] | None:
    """``all-linear`` or the listed module names."""
    return value if value in (None, "all-linear") else split_list(value)


def loc_field(loc: Iterable[Any]) -> str:
    """A pydantic error location as the API names the field (union branch names dropped)."""
    parts = [str(p) for p in loc]
    return ".".join(p for p in parts if not p.startswith(("literal[", "list[", "function-")))
