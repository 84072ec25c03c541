"""``loracle workers``: the fleet, as GET /v1/workers answers it."""

from __future__ import annotations

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from cli.client import ask, print_json
from cli.files import when
from cli.options import DEFAULT_URL, JsonOption, KeyOption, UrlOption

console = Console()


def workers(
    ctx: typer.Context,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Live workers: their card class, cards (total and free memory), queues and what runs
    on them. A worker that missed its heartbeat lease is not listed."""
    answer = ask(url, api_key, "/v1/workers", ctx=ctx)
    if as_json:
        print_json(answer)
        return
    if not answer["data"]:
        console.print("no worker is registered; start one with `loracle worker`")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for column in ("worker", "class", "cards", "jobs at once", "running", "heartbeat UTC"):
        table.add_column(column, overflow="fold")
    for w in answer["data"]:
        cards = ", ".join(
            f"{c['name']} {c['free_gib']:g}/{c['total_gib']:g} GiB free" for c in w["cards"]
        )
        table.add_row(
            w["id"],
            w["card_class"],
            cards,
            str(w["concurrency"]),
            ", ".join(w["running"]) or "-",
            when(w["heartbeat_at"], short=True),
        )
    console.print(table)


def calibration(
    ctx: typer.Context,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """The advisor's estimates against what jobs measured on CUDA cards, per card x
    architecture x variant (count, median and worst error), and each card's fit margin:
    its own once it has enough measured jobs, the published one until then."""
    answer = ask(url, api_key, "/v1/calibration", ctx=ctx)
    if as_json:
        print_json(answer)
        return
    if not answer["data"]:
        console.print(
            "no job has been measured on a CUDA card yet; every card uses the published "
            f"margin ({answer['published_margin']:.0%}: {answer['published_margin_source']})"
        )
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for column in ("card", "architecture", "variant", "jobs", "median error", "worst error"):
        table.add_column(column, overflow="fold")
    for g in answer["data"]:
        table.add_row(
            g["card_name"],
            g["architecture"],
            g["variant"],
            str(g["jobs"]),
            f"{g['median_error']:+.1%}",
            f"{g['worst_error']:+.1%}",
        )
    console.print(table)
    console.print("error: estimate / measured reserved peak - 1 (negative: under-estimated)")
    for card in answer["cards"]:
        how = (
            f"its own, from {card['jobs']} jobs"
            if card["measured"]
            else f"published until {card['jobs_needed']} jobs ({card['jobs']} so far)"
        )
        console.print(f"{card['card_name']}: fit margin {card['margin']:.0%}, {how}")
