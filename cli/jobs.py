"""``loracle jobs``: submit fine-tuning jobs to the service, follow them, fetch the adapter.

  loracle jobs submit --model ./data/models/m --file train.jsonl --variant lora --watch
  loracle jobs list --status running
  loracle jobs watch JOB            (a live progress bar: step, loss, ETA; events above it)
  loracle jobs download JOB -o adapter/
  loracle jobs merge JOB -o merged/   (a worker merges the adapter into its base; fetch it)
  loracle jobs try JOB "a prompt"     (the base's and the adapter's completions, side by side)

Every command talks to the REST API (cli/client.py) and, with ``--json``, prints exactly what
the API answered. ``watch`` exits 0 when the job succeeded and 1 when it failed or was
cancelled, so ``loracle jobs watch $JOB && loracle jobs download $JOB`` does what it says.
"""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from advisor.serving import SERVER_NAMES
from cli.client import ApiFailure, Client, ask, events, fail, print_json, say_error
from cli.files import upload_file, when
from cli.options import (
    DEFAULT_URL,
    FieldMap,
    JsonOption,
    KeyOption,
    UrlOption,
    split_list,
    target_modules,
)

app = typer.Typer(help="Fine-tuning jobs on the service.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

TERMINAL = ("succeeded", "failed", "cancelled")

# POST /v1/jobs's fields, each given by one of `submit`'s parameters; the body is built from
# this table and the API's errors about a field are shown under the parameter's flag.
SUBMIT_FIELDS = FieldMap(
    {
        "model": "model",
        "training_file": "training_file",
        "validation_file": "validation_file",
        "variant": "variant",
        "combine_with": "combine_with",
        "hyperparameters.epochs": "epochs",
        "hyperparameters.max_steps": "max_steps",
        "hyperparameters.learning_rate": "learning_rate",
        "hyperparameters.micro_batch_size": "micro_batch",
        "hyperparameters.gradient_accumulation_steps": "grad_accum",
        "hyperparameters.seq_len": "seq_len",
        "hyperparameters.lora_rank": "rank",
        "hyperparameters.lora_alpha": "lora_alpha",
        "hyperparameters.lora_dropout": "lora_dropout",
        "hyperparameters.target_modules": "targets",
        "hyperparameters.loraplus_lr_ratio": "loraplus_lr_ratio",
        "hyperparameters.checkpoint_steps": "checkpoint_steps",
        "hyperparameters.seed": "seed",
        "hyperparameters.precision": "precision",
        "hyperparameters.optimizer": "optimizer",
        "hyperparameters.gradient_checkpointing": "checkpointing",
        "hyperparameters.lr_scheduler": "lr_scheduler",
        "hyperparameters.warmup_ratio": "warmup_ratio",
        "hyperparameters.logging_steps": "logging_steps",
        "profile.hardware.gpu": "gpu",
        "profile.hardware.gpu_memory_gib": "gpu_memory",
        "profile.hardware.gpu_count": "gpus",
        "profile.goal.priority": "priority",
        "profile.goal.lora_quality_gap": "quality_gap",
        "profile.goal.serve_with": "serve_with",
        # for errors only: what the API names as a whole
        "profile.hardware": ("gpu", "gpu_memory"),
        "profile": ("gpu", "gpu_memory", "priority"),
    }
)
JOB_FIELDS = FieldMap({"limit": "limit", "after": "after", "status": "status"})

JobArg = Annotated[str, typer.Argument(help="A job id (job-...)", show_default=False)]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def _label(job: dict[str, Any]) -> str:
    return " + ".join([job["variant"], *job["combine_with"]])


def _status(status: str) -> str:
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(status, "cyan")
    return f"[{colour}]{status}[/{colour}]"


@app.command()
def submit(
    ctx: typer.Context,
    model: Annotated[
        str,
        typer.Option(help="Hugging Face hub id, or a model directory inside LORACLE_MODEL_ROOTS"),
    ],
    training_file: Annotated[
        str,
        typer.Option("--file", help="A file id (file-...), or a local JSONL to upload first"),
    ],
    validation_file: Annotated[
        str | None, typer.Option(help="A file id, or a local JSONL to upload first")
    ] = None,
    variant: Annotated[
        str, typer.Option(help="auto (the advisor chooses) | lora | qlora | dora | loraplus")
    ] = "auto",
    combine_with: Annotated[
        str | None, typer.Option(help="Comma-separated further variants, e.g. loraplus")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the data")] = None,
    learning_rate: Annotated[float | None, typer.Option()] = None,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per example")] = None,
    micro_batch: Annotated[int | None, typer.Option(help="Examples per forward pass")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro batches per step")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank")] = None,
    lora_alpha: Annotated[int | None, typer.Option()] = None,
    lora_dropout: Annotated[float | None, typer.Option()] = None,
    targets: Annotated[str | None, typer.Option(help="all-linear or q_proj,v_proj,...")] = None,
    loraplus_lr_ratio: Annotated[float | None, typer.Option()] = None,
    checkpoint_steps: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    precision: Annotated[str | None, typer.Option(help="auto | bf16 | fp16 | fp32")] = None,
    optimizer: Annotated[
        str | None, typer.Option(help="adamw | adamw_8bit | paged_adamw_8bit | sgd")
    ] = None,
    checkpointing: Annotated[
        bool | None, typer.Option("--checkpointing/--no-checkpointing")
    ] = None,
    lr_scheduler: Annotated[str | None, typer.Option(help="cosine | linear | constant")] = None,
    warmup_ratio: Annotated[float | None, typer.Option()] = None,
    logging_steps: Annotated[int | None, typer.Option()] = None,
    gpu: Annotated[
        str | None, typer.Option(help="For --variant auto: the card's catalog id, e.g. t4")
    ] = None,
    gpu_memory: Annotated[float | None, typer.Option(help="For --variant auto: GiB")] = None,
    gpus: Annotated[int | None, typer.Option(help="For --variant auto: cards")] = None,
    priority: Annotated[
        str | None, typer.Option(help="For --variant auto: memory | quality | speed | none")
    ] = None,
    quality_gap: Annotated[
        bool, typer.Option(help="For --variant auto: plain LoRA fell short on quality")
    ] = False,
    serve_with: Annotated[
        str | None,
        typer.Option(
            help=f"For --variant auto: where the adapter will be served, {' | '.join(SERVER_NAMES)}"
        ),
    ] = None,
    watch_it: Annotated[
        bool, typer.Option("--watch", help="Follow the job until it ends (as `jobs watch`)")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a fine-tuning job; prints its id (with --watch, follows it to the end)."""
    # the parameters by name, as SUBMIT_FIELDS names them; None is "not given"
    values = {k: v for k, v in locals().items() if k not in ("ctx", "url", "api_key", "as_json")}
    values["combine_with"] = split_list(combine_with)
    values["targets"] = target_modules(targets)
    values["quality_gap"] = quality_gap or None
    with Client(url, api_key) as client:
        try:
            for name in ("training_file", "validation_file"):
                values[name] = _file_id(client, values[name])
            job = client.post("/v1/jobs", json=SUBMIT_FIELDS.body(values))
        except ApiFailure as exc:
            fail(exc, SUBMIT_FIELDS, ctx)
        if as_json and not watch_it:
            print_json(job)
            return
        if not as_json:
            chosen = " (the advisor's choice)" if job["requested_variant"] == "auto" else ""
            console.print(
                f"[bold]{job['id']}[/bold] {_status(job['status'])}: {_label(job)}{chosen} "
                f"on {escape(job['model'])}"
            )
        if watch_it:
            raise typer.Exit(follow(client, job["id"], as_json))


def _file_id(client: Client, value: str | None) -> str | None:
    """A file id as given; a local file is uploaded first and its id used."""
    if value is None or (value.startswith("file-") and not Path(value).exists()):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        return value  # the API names what is wrong with it
    answer = upload_file(client, path)
    # a side note on stderr: stdout is the job (its id, or with --json the API's answer)
    err.print(
        f"uploaded {escape(str(path))}: {answer['id']} ({answer['rows']} rows)", soft_wrap=True
    )
    return str(answer["id"])


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="queued | running | succeeded | failed | cancelled")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 20,
    after: Annotated[str | None, typer.Option(help="The last job id of the previous page")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Your jobs, newest first."""
    answer = ask(
        url,
        api_key,
        "/v1/jobs",
        fields=JOB_FIELDS,
        ctx=ctx,
        status=status,
        limit=limit,
        after=after,
    )
    if as_json:
        print_json(answer)
        return
    if not answer["data"]:
        console.print("no jobs" + (f" {status}" if status else "") + " yet")
        return
    # ids are what a user copies into the next command: never wrapped; the model's column
    # gives way first on a narrow terminal
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    table.add_column("id", no_wrap=True, min_width=28)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("variant", min_width=4, overflow="ellipsis")
    table.add_column("model", min_width=5, overflow="ellipsis")
    table.add_column("step", justify="right", no_wrap=True)
    table.add_column("loss", justify="right", no_wrap=True)
    table.add_column("created UTC", no_wrap=True, min_width=11)
    for job in answer["data"]:
        table.add_row(
            job["id"],
            _status(job["status"]),
            _label(job),
            escape(_short(job["model"])),
            f"{job['step']}/{job['total_steps'] or '?'}",
            "" if job["loss"] is None else f"{job['loss']:.3f}",
            when(job["created_at"], short=True),
        )
    console.print(table)
    if answer["has_more"]:
        console.print(f"more: loracle jobs list --after {answer['data'][-1]['id']}")


def _short(model: str) -> str:
    """A local model's folder name, or a hub id as it is."""
    return Path(model).name if Path(model).is_absolute() else model


@app.command()
def get(
    job_id: JobArg,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """One job: status, progress, memory estimated and measured, the advisor's decision."""
    job = ask(url, api_key, f"/v1/jobs/{job_id}")
    if as_json:
        print_json(job)
        return
    _print_job(job)


def _print_job(job: dict[str, Any]) -> None:
    rows = [
        ("status", _status(job["status"])),
        ("variant", _label(job) + (" (auto)" if job["requested_variant"] == "auto" else "")),
        ("model", escape(job["model"])),
        ("training file", job["training_file"]),
        ("progress", f"step {job['step']}/{job['total_steps'] or '?'}"),
        ("loss", "-" if job["loss"] is None else f"{job['loss']:.4f}"),
        ("ETA", _duration(job["eta_seconds"]) if job["status"] == "running" else "-"),
        ("memory", _memory(job)),
        (
            "ran on",
            f"{job['device']} ({escape(job['device_name'] or '?')}), {job['precision']}"
            if job["device"]
            else "-",
        ),
        ("created", when(job["created_at"]) + " UTC"),
        ("finished", when(job["finished_at"]) + " UTC" if job["finished_at"] else "-"),
        ("worker", job["worker"] or "-"),
    ]
    if job["error"]:
        rows.append(("error", f"[red]{escape(job['error']['message'])}[/red]"))
    if job["cancel_outcome"]:
        rows.append(("cancel", escape(job["cancel_outcome"])))
    table = Table(title=job["id"], show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    decision = job.get("decision") or {}
    for step in decision.get("decision_path", []):
        console.print(f"  {escape(step['question'])} [cyan]{escape(str(step['answer']))}[/cyan]")
    hp = ", ".join(f"{k} {v}" for k, v in job["hyperparameters"].items() if v is not None)
    console.print(f"[dim]hyperparameters: {escape(hp)}[/dim]", soft_wrap=True)


def _memory(job: dict[str, Any]) -> str:
    """The estimate (for a CUDA card) and what the run measured, each named for what it is."""
    memory = job.get("memory") or {}
    measured = memory.get("measured") or {}
    parts = []
    if memory.get("estimated_total_gib") is not None:
        parts.append(
            f"{memory['estimated_peak_allocated_gib']:.3f} GiB peak / "
            f"{memory['estimated_total_gib']:.3f} GiB total estimated for a CUDA card"
        )
    if measured.get("peak_allocated_gib") is not None:
        reserved = measured.get("peak_reserved_gib") or 0.0
        parts.append(
            f"{measured['peak_allocated_gib']:.3f} GiB allocated / {reserved:.3f} GiB reserved "
            f"measured on {measured['device_name']}"
        )
    elif measured.get("rss_growth_gib") is not None:
        parts.append(
            f"{measured['rss_growth_gib']:.3f} GiB process growth on the CPU (another quantity, "
            "not compared)"
        )
    return "; ".join(parts) or "-"


@app.command()
def watch(
    job_id: JobArg,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Follow a job live until it ends: a progress bar with step, loss and ETA.

    Events show above the bar. Exits 0 when the job succeeded, 1 when it failed or was
    cancelled. With --json: the API's event objects, one a line.
    """
    with Client(url, api_key) as client:
        raise typer.Exit(follow(client, job_id, as_json))


# Reconnections of a dropped event stream before `watch` gives up; the stream resumes after
# the last event received, so nothing is shown twice.
RECONNECTS = 5


def follow(client: Client, job_id: str, as_json: bool = False) -> int:
    """Show a job's events as they happen until it ends; 0 when it succeeded, else 1."""
    try:
        job = client.get(f"/v1/jobs/{job_id}")
    except ApiFailure as exc:
        fail(exc)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
        disable=as_json,
    )
    task = progress.add_task(
        job_id, total=job["total_steps"], completed=job["step"], loss="-", eta="-"
    )
    last: int | None = None
    status: str | None = None
    tries = 0
    with progress:
        while status is None:
            try:
                with client.stream(f"/v1/jobs/{job_id}/events/stream", after=last) as response:
                    for name, data in events(response):
                        if name == "end":
                            status = str(data["status"])
                            break
                        last, tries = int(data["id"]), 0
                        if as_json:
                            print(json.dumps(data), flush=True)
                        else:
                            _show(progress, task, data)
            except ApiFailure as exc:
                if exc.status != 0 or tries >= RECONNECTS:
                    progress.stop()
                    fail(exc)
            # httpx's read timeout is a TransportError too: a silent server is a dropped one
            if status is None:
                tries += 1
                if tries > RECONNECTS:
                    progress.stop()
                    say_error(f"the event stream of {job_id} keeps dropping; try again later")
                    return 1
                time.sleep(min(2**tries, 10))
    if not as_json:
        _summary(client, job_id)
    return 0 if status == "succeeded" else 1


def _show(progress: Progress, task: Any, event: dict[str, Any]) -> None:
    data = event["data"]
    if event["type"] == "metrics":
        progress.update(
            task,
            total=data.get("total_steps"),
            completed=data.get("step", 0),
            loss=f"{data['loss']:.4f}" if data.get("loss") is not None else "-",
            eta=_duration(data.get("eta_seconds")),
        )
        return
    level = event["level"]
    colour = {"warning": "yellow", "error": "red"}.get(level, "dim")
    stamp = time.strftime("%H:%M:%S", time.localtime(event["created_at"]))
    progress.console.print(
        f"[{colour}]{stamp} {escape(event['type'])}[/{colour}] {escape(_message(event))}",
        soft_wrap=True,
    )


def _message(event: dict[str, Any]) -> str:
    """An event's message; for one without (the worker's `started`, `finished`), its
    data's plain values."""
    if event["message"]:
        return str(event["message"])
    plain = [
        f"{k} {v}" for k, v in event["data"].items() if isinstance(v, str | int | float) and v != ""
    ]
    return ", ".join(plain)


def _summary(client: Client, job_id: str) -> None:
    try:
        job = client.get(f"/v1/jobs/{job_id}")
    except ApiFailure as exc:
        fail(exc)
    line = f"[bold]{job_id}[/bold] {_status(job['status'])} at step {job['step']}"
    if job["loss"] is not None:
        line += f", loss {job['loss']:.4f}"
    memory = _memory(job)
    if memory != "-":
        line += f"; {memory}"
    console.print(line, soft_wrap=True)
    if job["error"]:
        console.print(f"[red]{escape(job['error']['message'])}[/red]", soft_wrap=True)
    if job["status"] == "succeeded":
        console.print(f"the adapter: loracle jobs download {job_id}")


@app.command("events")
def list_events(
    ctx: typer.Context,
    job_id: JobArg,
    after: Annotated[int | None, typer.Option(help="The last event id already seen")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (up to 1000)")] = 1000,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """A job's events: status changes, metrics of every logging step, warnings."""
    path = f"/v1/jobs/{job_id}/events"
    answer = ask(url, api_key, path, fields=JOB_FIELDS, ctx=ctx, after=after, limit=limit)
    if as_json:
        print_json(answer)
        return
    table = Table()
    for col in ("id", "time (UTC)", "level", "type", "message"):
        table.add_column(col)
    for e in answer["data"]:
        table.add_row(
            str(e["id"]), when(e["created_at"]), e["level"], e["type"], escape(_message(e))
        )
    console.print(table)
    if answer["has_more"]:
        console.print(f"more: loracle jobs events {job_id} --after {answer['data'][-1]['id']}")


@app.command()
def download(
    job_id: JobArg,
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Artifacts to fetch (default: all)", show_default=False),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder (default: ./JOB_ID)")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Download a finished job's adapter and its record (plan.json, metrics.json, loss.png)."""
    folder = output or Path(job_id)
    with Client(url, api_key) as client:
        try:
            listing = client.get(f"/v1/jobs/{job_id}/artifacts")
            available = {a["name"]: a["bytes"] for a in listing["data"]}
            if not available:
                job = client.get(f"/v1/jobs/{job_id}")
                say_error(
                    f"job {job_id} is {job['status']} and has no artifacts"
                    + (
                        f"; they are written when it succeeds (loracle jobs watch {job_id})"
                        if job["status"] not in TERMINAL
                        else ""
                    )
                )
                raise typer.Exit(1)
            wanted = names or sorted(available)
            unknown = [n for n in wanted if n not in available]
            if unknown:
                raise typer.BadParameter(
                    f"job {job_id} has no {', '.join(unknown)}; it has {', '.join(available)}",
                    param_hint="NAMES",
                )
            saved = [_fetch(client, job_id, name, folder) for name in wanted]
        except ApiFailure as exc:
            fail(exc)
    if as_json:
        print_json(listing)
        return
    for path in saved:
        console.print(f"{escape(str(path))} ({path.stat().st_size} bytes)")


def _fetch(client: Client, job_id: str, name: str, folder: Path) -> Path:
    """One artifact into ``folder``, written to a temporary name and renamed, so an
    interrupted download never leaves a file that looks whole."""
    dest = (folder / name).resolve()
    if folder.resolve() not in dest.parents:  # the listing's names are plain; keep it so
        raise typer.BadParameter(f"artifact name {name!r} is not a plain file name")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    with client.stream(f"/v1/jobs/{job_id}/artifacts/{name}") as response, partial.open("wb") as fh:
        for chunk in response.iter_bytes():
            fh.write(chunk)
    partial.replace(dest)
    return dest


@app.command()
def cancel(
    job_id: JobArg,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a queued or running job; a running one stops within one optimizer step."""
    job = ask(url, api_key, f"/v1/jobs/{job_id}/cancel", post=True)
    if as_json:
        print_json(job)
        return
    if job["status"] == "cancelled":
        console.print(f"{job_id} {_status('cancelled')}")
    else:
        console.print(
            f"{job_id} {_status(job['status'])}, cancel requested: it stops within one "
            f"optimizer step (loracle jobs watch {job_id})"
        )


MERGE_DONE = ("succeeded", "failed")


@app.command()
def merge(
    job_id: JobArg,
    into_model_root: Annotated[
        str | None,
        typer.Option(
            "--into-model-root",
            help="Also write it to this folder of the service's first model root, where a "
            "later job names it as its --model",
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help="bf16, fp16 or fp32 (default: the precision the job trained in)"),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Download the merged model into this folder"),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the merge")] = 3600.0,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Merge a succeeded job's adapter into its base model on a worker, wait for it, and
    optionally download it (safetensors, config.json, tokenizer: ready for from_pretrained
    and vLLM). Exits 1 when the merge fails."""
    body = {k: v for k, v in {"into_model_root": into_model_root, "dtype": dtype}.items() if v}
    with Client(url, api_key) as client:
        try:
            answer = client.post(f"/v1/jobs/{job_id}/merge", json=body)
            deadline = time.monotonic() + timeout
            while answer["status"] not in MERGE_DONE and time.monotonic() < deadline:
                time.sleep(1.0)
                answer = client.get(f"/v1/jobs/{job_id}/merge")
            if output is not None and answer["status"] == "succeeded":
                _fetch_merged(client, job_id, output)
        except ApiFailure as exc:
            fail(exc)
    if as_json:
        print_json(answer)
    elif answer["status"] == "succeeded":
        where = f" -> {escape(str(output))}" if output else ""
        model = f"; a job trains on it with --model {answer['model']}" if answer["model"] else ""
        console.print(
            f"{job_id} merged ({answer['dtype']}, {answer['bytes'] / 2**30:.3g} GiB){where}{model}"
        )
    elif answer["status"] == "failed":
        say_error(f"merge of {job_id} failed: {answer['error']['message']}")
    else:
        say_error(f"merge of {job_id} still {answer['status']} after {timeout:g} s")
    if answer["status"] != "succeeded":
        raise typer.Exit(1)


def _fetch_merged(client: Client, job_id: str, folder: Path) -> None:
    """The merged model's tar archive, unpacked into ``folder`` (its files directly in it);
    tarfile's data filter refuses links and paths outside it."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / ".merged.tar.part"
    with client.stream(f"/v1/jobs/{job_id}/merge/content") as response, partial.open("wb") as fh:
        for chunk in response.iter_bytes():
            fh.write(chunk)
    prefix = f"{job_id}-merged/"
    with tarfile.open(partial) as archive:
        members = []
        for member in archive.getmembers():
            if member.name.startswith(prefix):
                member.name = member.name.removeprefix(prefix)
                members.append(member)
        archive.extractall(folder, members=members, filter="data")
    partial.unlink()


TRY_FIELDS = FieldMap(
    {
        "prompts": "prompts",
        "max_new_tokens": "max_new_tokens",
        "temperature": "temperature",
        "seed": "seed",
    }
)


@app.command("try")
def try_adapter(
    ctx: typer.Context,
    job_id: JobArg,
    prompts: Annotated[
        list[str], typer.Argument(help="1 to 8 prompts", show_default=False, metavar="PROMPT...")
    ],
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Tokens generated at most per prompt and side (1-512)")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="0: greedy (the default); up to 2: sampling")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="The seed of both sides' sampling (default 0)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the completions")] = 300.0,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Complete prompts with a succeeded job's base model and with its adapter, side by side,
    on a worker; waits for the completions. Exits 1 when the try fails."""
    body = TRY_FIELDS.body(
        {
            "prompts": prompts,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "seed": seed,
        }
    )
    with Client(url, api_key) as client:
        try:
            answer = client.post(f"/v1/fine_tuning/jobs/{job_id}/try", json=body)
            deadline = time.monotonic() + timeout
            while answer["status"] in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.5)
                answer = client.get(answer["url"])
        except ApiFailure as exc:
            fail(exc, TRY_FIELDS, ctx)
    if as_json:
        print_json(answer)
    elif answer["status"] == "succeeded":
        table = Table(box=box.SIMPLE_HEAD, show_lines=True)
        for column in ("prompt", "base", f"adapter ({job_id})"):
            table.add_column(column, overflow="fold")
        for c in answer["completions"]:
            table.add_row(escape(c["prompt"]), escape(c["base"]), escape(c["adapter"]))
        console.print(table)
        console.print(
            f"{answer['device']}, {answer['base_weights']} base weights; loaded in "
            f"{answer['load_seconds']:.2f} s, generated in {answer['generate_seconds']:.2f} s",
            soft_wrap=True,
        )
    elif answer["status"] == "failed":
        say_error(
            f"try {answer['id']} failed ({answer['error']['code']}): {answer['error']['message']}"
        )
    else:
        say_error(f"try {answer['id']} still {answer['status']} after {timeout:g} s")
    if answer["status"] != "succeeded":
        raise typer.Exit(1)
