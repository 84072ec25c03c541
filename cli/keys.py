"""``loracle keys``: the API keys the service accepts, in its key file.

Run on the service's machine, with its LORACLE_DATA_DIR: the file is
``$LORACLE_DATA_DIR/api-key.sha256`` and holds digests only (loracle/keys.py). A new key is
printed once and cannot be shown again. The API reads the file on each request, so a key
created or revoked here counts at once, without a restart, unless the service was started
with LORACLE_API_KEY_HASHES, which then wins over the file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from cli.client import say_error
from loracle import keys
from loracle.settings import get_settings

app = typer.Typer(help="API keys of the service (run on its machine).", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

DEFAULT_OWNER = "default"
# Shortest digest prefix `revoke` takes: 8 hex digits are 4 billion values, so a prefix
# that long names one key of a file by accident practically never.
MIN_PREFIX = 8


def key_panel(key: str, owner: str) -> Panel:
    """A new key, framed, with the line to export it: what `keys create` and the first
    `loracle up` print, once."""
    # Each line fits an 80-column terminal: a Panel crops what does not fit, and the export
    # line is copied whole.
    return Panel(
        f"export LORACLE_API_KEY={key}\n"
        f"[dim]owner {escape(owner)}; only its digest is kept (loracle keys list)[/dim]",
        title="Your API key, shown once",
        title_align="left",
        expand=False,
    )


def add_key(owner: str) -> tuple[str, keys.KeyEntry]:
    """A new key for ``owner``, its digest appended to the key file: (key, entry)."""
    from api.security import OWNER_NAME, digest, new_key

    if not OWNER_NAME.match(owner):
        raise typer.BadParameter(
            f"{owner!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit",
            param_hint="--owner",
        )
    path = keys.key_file(get_settings())
    key = new_key()
    entry = keys.KeyEntry(owner, digest(key), datetime.now(UTC).replace(microsecond=0))
    keys.write(path, [*keys.read(path), entry])
    return key, entry


def _env_note() -> None:
    if get_settings().api_key_hashes:
        err.print(
            "[yellow]note[/yellow] LORACLE_API_KEY_HASHES is set here: a service started with "
            "it reads that list, not the key file, so add or remove the entry there too",
            soft_wrap=True,
        )


@app.command()
def create(
    owner: Annotated[
        str,
        typer.Option(
            help="Who the key acts for: keys of one owner share its files and jobs "
            "(another key of the same owner is how a key is rotated)"
        ),
    ] = DEFAULT_OWNER,
    as_json: Annotated[bool, typer.Option("--json", help="Print the key as JSON")] = False,
) -> None:
    """Make a new API key; it is printed once, and only its digest is kept."""
    key, entry = add_key(owner)
    if as_json:
        print(json.dumps({**_as_dict(entry), "key": key}, indent=2))
    else:
        console.print(key_panel(key, owner), soft_wrap=True)
    _env_note()


def _as_dict(entry: keys.KeyEntry) -> dict[str, str | None]:
    return {
        "owner": entry.owner or entry.digest,
        "digest": entry.digest,
        "created_at": entry.created_at.isoformat() if entry.created_at else None,
    }


@app.command("list")
def list_keys(
    as_json: Annotated[bool, typer.Option("--json", help="Print the entries as JSON")] = False,
) -> None:
    """The accepted keys: owner, digest prefix and when each was made."""
    path = keys.key_file(get_settings())
    entries = keys.read(path)
    if as_json:
        print(json.dumps([_as_dict(e) for e in entries], indent=2))
        return
    if not entries:
        console.print(f"no keys in {path}; make one with `loracle keys create`")
    else:
        table = Table(title=str(path))
        for col in ("owner", "digest", "created (UTC)"):
            table.add_column(col)
        for e in entries:
            table.add_row(
                escape(e.owner or "(its digest)"),
                e.digest[:12],
                e.created_at.strftime("%Y-%m-%d %H:%M:%S") if e.created_at else "-",
            )
        console.print(table)
    _env_note()


@app.command()
def revoke(
    target: Annotated[
        str,
        typer.Argument(
            help=f"An owner (all its keys) or a digest prefix of at least {MIN_PREFIX} hex "
            "digits, as `loracle keys list` shows them",
            show_default=False,
        ),
    ],
) -> None:
    """Stop accepting a key (or every key of an owner); what it created stays its owner's."""
    path = keys.key_file(get_settings())
    entries = keys.read(path)
    by_owner = [e for e in entries if (e.owner or e.digest) == target]
    prefix = target.lower()
    by_digest = (
        [e for e in entries if e.digest.startswith(prefix)]
        if len(prefix) >= MIN_PREFIX and all(c in "0123456789abcdef" for c in prefix)
        else []
    )
    if by_owner and by_digest and by_owner != by_digest:
        say_error(f"{target!r} is both an owner and a digest prefix; give a longer prefix")
        raise typer.Exit(2)
    if len(by_digest) > 1 and not by_owner:
        say_error(f"{target!r} starts {len(by_digest)} digests; give more of it")
        raise typer.Exit(2)
    gone = by_owner or by_digest
    if not gone:
        hint = (
            f" (a digest prefix needs {MIN_PREFIX}+ hex digits)" if len(target) < MIN_PREFIX else ""
        )
        say_error(f"no key of owner or digest {target!r} in {path}{hint}; see `loracle keys list`")
        raise typer.Exit(1)
    left = [e for e in entries if e not in gone]
    keys.write(path, left)
    for e in gone:
        console.print(f"revoked {escape(e.owner or e.digest)} {e.digest[:12]}")
    if not left:
        err.print(
            "[yellow]note[/yellow] no keys are left: every request gets 401 until you "
            "`loracle keys create` one",
            soft_wrap=True,
        )
    _env_note()


@app.command()
def worker(
    as_json: Annotated[bool, typer.Option("--json", help="Print token and digest as JSON")] = False,
) -> None:
    """Make a worker token for a worker on another host (LORACLE_API_URL): the worker gets
    the token, the API the digest. It opens only the /v1/worker/ file routes, and only for
    jobs the worker holds the lease of; it is not an API key. Nothing is written: add the
    digest to the API's LORACLE_WORKER_TOKEN_HASHES (comma-separated) and restart it."""
    from api.security import digest, new_worker_token

    token = new_worker_token()
    if as_json:
        print(json.dumps({"token": token, "digest": digest(token)}, indent=2))
        return
    # Plain lines, no panel: a panel crops a line wider than the terminal, and the digest
    # alone is 64 characters; each value is copied whole from its own line.
    console.print("[bold]A worker token, shown once.[/bold] On the worker:")
    print(f"export LORACLE_WORKER_TOKEN={token}")
    console.print("On the API, add its digest to LORACLE_WORKER_TOKEN_HASHES (comma-separated):")
    print(digest(token))
