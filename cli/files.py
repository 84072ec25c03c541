"""``loracle files``: upload JSONL training data to the service and list what is there."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.client import ApiFailure, Client, ask, fail, print_json
from cli.options import DEFAULT_URL, FieldMap, JsonOption, KeyOption, UrlOption

app = typer.Typer(help="Training data on the service.", no_args_is_help=True)
console = Console()

UPLOAD_FIELDS = FieldMap({"file": "path", "purpose": "path"})


def when(timestamp: int | None, short: bool = False) -> str:
    """A Unix time as UTC; ``short`` for a table's column (month, day, minutes)."""
    if timestamp is None:
        return ""
    shape = "%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S"
    return datetime.fromtimestamp(timestamp, UTC).strftime(shape)


def upload_file(client: Client, path: Path) -> dict[str, Any]:
    """POST /v1/files with ``path``; the API's answer. A path that is not a readable file is
    a usage error here, before anything is sent.

    The same bytes under the same name give the same file id (an Idempotency-Key made of
    their digest): `jobs submit --file train.jsonl`, retried after a refused flag, does not
    store the data again."""
    if not path.is_file():
        raise typer.BadParameter(f"{path} is not a file", param_hint="PATH")
    content = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            content.update(block)
    key = hashlib.sha256(f"{path.name}\0{content.hexdigest()}".encode()).hexdigest()
    with path.open("rb") as fh:
        answer: dict[str, Any] = client.post(
            "/v1/files",
            files={"file": (path.name, fh, "application/jsonl")},
            data={"purpose": "fine-tune"},
            headers={"Idempotency-Key": f"loracle-cli-upload-{key}"},
        )
    return answer


@app.command()
def upload(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            help="JSONL: rows of {text}, {prompt, completion} or {messages: [...]}",
            show_default=False,
        ),
    ],
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a JSONL training file; prints its id for `loracle jobs submit --file`."""
    with Client(url, api_key) as client:
        try:
            answer = upload_file(client, path)
        except ApiFailure as exc:
            fail(exc, UPLOAD_FIELDS, ctx)
    if as_json:
        print_json(answer)
        return
    console.print(
        f"[bold]{answer['id']}[/bold] {answer['filename']}: {answer['rows']} rows of "
        f"{answer['format']}, {answer['bytes']} bytes"
    )


@app.command("list")
def list_files(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 100,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """The files you uploaded, newest first."""
    answer = ask(
        url, api_key, "/v1/files", fields=FieldMap({"limit": "limit"}), ctx=ctx, limit=limit
    )
    if as_json:
        print_json(answer)
        return
    if not answer["data"]:
        console.print("no files yet; upload one with `loracle files upload PATH`")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    # the id is copied into `jobs submit --file`: never cut
    table.add_column("id", no_wrap=True, min_width=29)
    table.add_column("filename", min_width=5, overflow="ellipsis")
    table.add_column("rows", justify="right", no_wrap=True)
    table.add_column("format", min_width=4, overflow="ellipsis")
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("created UTC", no_wrap=True, min_width=11)
    for f in answer["data"]:
        table.add_row(
            f["id"],
            escape(f["filename"]),
            str(f["rows"]),
            f["format"],
            str(f["bytes"]),
            when(f["created_at"], short=True),
        )
    console.print(table)
