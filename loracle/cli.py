"""The ``loracle`` command line.

  loracle advise   --model meta-llama/Llama-2-7b-hf --gpu rtx-4090 --priority speed
  loracle estimate --model ./my-model --variant qlora --seq-len 4096
  loracle serve    --host 127.0.0.1 --port 8000
  loracle up       (API + one worker on the embedded default)

``advise`` and ``estimate`` print a readable answer, or with ``--json`` exactly
what the API returns for the same request.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from advisor.errors import InvalidInput

app = typer.Typer(
    help="loracle: which LoRA variant to use on your hardware, whether it fits, and a "
    "service that runs the job.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)


def _model_ref(model: str) -> dict[str, Any]:
    """A catalog name, a local model directory, or a config.json file."""
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise typer.BadParameter(
                f"{model} is a directory without config.json", param_hint="--model"
            )
    if path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            # ValueError: broken JSON, bytes that are not UTF-8, an integer too long to read
            raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--model") from exc
        if not isinstance(config, dict):
            kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
            raise typer.BadParameter(
                f"{path} holds {kind.get(type(config), 'a number')}, not a JSON object; a "
                "model's config.json is an object of its architecture fields, such as "
                '{"model_type": "llama", "hidden_size": 4096, ...}',
                param_hint="--model",
            )
        config.setdefault("_name_or_path", str(Path(model)))
        return {"config": config}
    return {"name": model}


def _training(
    seq_len: int | None,
    micro_batch: int | None,
    grad_accum: int | None,
    rank: int | None,
    targets: str | None,
    optimizer: str | None,
    precision: str | None,
    checkpointing: bool | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (
        ("seq_len", seq_len),
        ("micro_batch_size", micro_batch),
        ("gradient_accumulation_steps", grad_accum),
        ("lora_rank", rank),
        ("optimizer", optimizer),
        ("precision", precision),
        ("gradient_checkpointing", checkpointing),
    ):
        if value is not None:
            out[key] = value
    if targets is not None:
        out["target_modules"] = (
            "all-linear" if targets == "all-linear" else [t.strip() for t in targets.split(",")]
        )
    return out


def _hardware(gpu: str | None, gpu_memory: float | None, gpus: int) -> dict[str, Any]:
    return {"gpu": gpu, "gpu_memory_gib": gpu_memory, "gpu_count": gpus}


def _fail(exc: Exception) -> None:
    if isinstance(exc, InvalidInput):
        for p in exc.problems:
            err.print(f"[red]error[/red] {p.field}: {p.message}")
    elif isinstance(exc, ValidationError):
        for e in exc.errors():
            field = ".".join(str(p) for p in e["loc"])
            err.print(f"[red]error[/red] {field}: {e['msg']} (got {e.get('input')!r})")
    else:
        raise exc
    raise typer.Exit(2)


def _bar(value: float, scale: float, width: int = 28) -> str:
    filled = round(width * min(value / scale, 1.0)) if scale > 0 else 0
    return "█" * filled + "·" * (width - filled)


def _print_estimates(estimates: dict[str, dict[str, Any]], card_gib: float | None) -> None:
    scale = max([e["total_gib"] for e in estimates.values()] + [card_gib or 0])
    table = Table(title="GPU memory per variant (GiB)")
    for col in ("variant", "peak", "total", "", "fits"):
        table.add_column(col, justify="right" if col in ("peak", "total") else "left")
    for name, e in estimates.items():
        fits = "" if e["fits"] is None else ("[green]yes[/green]" if e["fits"] else "[red]no[/red]")
        table.add_row(
            name,
            f"{e['peak_allocated_gib']:.1f}",
            f"{e['total_gib']:.1f}",
            _bar(e["total_gib"], scale),
            fits,
        )
    if card_gib is not None:
        table.add_row("card", "", f"{card_gib:.1f}", _bar(card_gib, scale), "")
    console.print(table)


@app.command()
def advise(
    model: Annotated[str, typer.Option(help="Catalog name, local model dir, or config.json")],
    gpu: Annotated[str | None, typer.Option(help="GPU catalog id, e.g. rtx-4090")] = None,
    gpu_memory: Annotated[float | None, typer.Option(help="Card memory in GiB")] = None,
    gpus: Annotated[int, typer.Option(help="Number of cards")] = 1,
    priority: Annotated[str, typer.Option(help="memory | quality | speed | none")] = "none",
    quality_gap: Annotated[bool, typer.Option(help="Plain LoRA fell short on quality")] = False,
    seq_len: Annotated[int | None, typer.Option()] = None,
    micro_batch: Annotated[int | None, typer.Option()] = None,
    grad_accum: Annotated[int | None, typer.Option()] = None,
    rank: Annotated[int | None, typer.Option()] = None,
    targets: Annotated[str | None, typer.Option(help="all-linear or q_proj,v_proj,...")] = None,
    optimizer: Annotated[str | None, typer.Option()] = None,
    precision: Annotated[str | None, typer.Option()] = None,
    checkpointing: Annotated[
        bool | None, typer.Option("--checkpointing/--no-checkpointing")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON")] = False,
) -> None:
    """Recommend a LoRA variant for a model on a card, with memory and hyperparameters."""
    from advisor.decide import recommend
    from advisor.profile import Profile

    try:
        profile = Profile.model_validate(
            {
                "hardware": _hardware(gpu, gpu_memory, gpus),
                "model": _model_ref(model),
                "training": _training(
                    seq_len,
                    micro_batch,
                    grad_accum,
                    rank,
                    targets,
                    optimizer,
                    precision,
                    checkpointing,
                ),
                "goal": {"priority": priority, "lora_quality_gap": quality_gap},
            }
        )
        answer = recommend(profile)
    except (InvalidInput, ValidationError) as exc:
        _fail(exc)
        return
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    fits = "[green]fits[/green]" if answer["fits"] else "[red]does not fit[/red]"
    console.print(
        f"[bold]{answer['label']}[/bold] for {answer['model']['name']} on "
        f"{answer['hardware']['name'] or str(answer['hardware']['memory_gib']) + ' GiB'}: "
        f"{fits}, {answer['estimate']['total_gib']:.1f} GiB, headroom "
        f"{answer['headroom_gib']:.1f} GiB ({answer['precision']})"
    )
    _print_estimates(answer["estimates"], answer["hardware"]["memory_gib"])
    console.print("[bold]Decision path[/bold]")
    for step in answer["decision_path"]:
        mark = "→ " + step["decides"] if step["decides"] else ""
        console.print(f"  {step['question']} [cyan]{step['answer']}[/cyan] {mark}")
        console.print(f"    [dim]{step['evidence']}[/dim]")
    hp = answer["hyperparameters"]
    console.print("[bold]Hyperparameters[/bold]")
    console.print(f"  LoraConfig: {hp['lora_config']}")
    if hp["bnb_config"]:
        console.print(f"  BitsAndBytesConfig: {hp['bnb_config']}")
    console.print(
        f"  learning_rate {hp['learning_rate']:g}, optimizer {hp['optimizer']}, "
        f"scheduler {hp['lr_scheduler']}"
        + (f", loraplus_lr_ratio {hp['loraplus_lr_ratio']:g}" if hp["loraplus_lr_ratio"] else "")
    )
    if answer["remedies"]:
        console.print("[bold]Remedies[/bold]")
        for r in answer["remedies"]:
            console.print(f"  {r['change']}: {r['estimate']['total_gib']:.1f} GiB")
    if answer["verdict"]:
        console.print(f"[red]{answer['verdict']}[/red]")
    for note in answer["notes"]:
        console.print(f"  [dim]• {note}[/dim]")


@app.command()
def estimate(
    model: Annotated[str, typer.Option(help="Catalog name, local model dir, or config.json")],
    variant: Annotated[str, typer.Option(help="lora | qlora | dora | loraplus")] = "lora",
    combine_with: Annotated[
        str | None, typer.Option(help="Comma-separated further variants, e.g. dora")
    ] = None,
    gpu: Annotated[str | None, typer.Option()] = None,
    gpu_memory: Annotated[float | None, typer.Option()] = None,
    gpus: Annotated[int, typer.Option()] = 1,
    seq_len: Annotated[int | None, typer.Option()] = None,
    micro_batch: Annotated[int | None, typer.Option()] = None,
    grad_accum: Annotated[int | None, typer.Option()] = None,
    rank: Annotated[int | None, typer.Option()] = None,
    targets: Annotated[str | None, typer.Option()] = None,
    optimizer: Annotated[str | None, typer.Option()] = None,
    precision: Annotated[str | None, typer.Option()] = None,
    checkpointing: Annotated[
        bool | None, typer.Option("--checkpointing/--no-checkpointing")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON")] = False,
    trace: Annotated[
        bool,
        typer.Option(
            "--trace",
            help="Measure by tracing two real training steps on PyTorch's meta device "
            "(needs the worker extra; seconds, cached under $LORACLE_DATA_DIR/trace-cache)",
        ),
    ] = False,
) -> None:
    """GPU memory of one variant for a model and training settings."""
    from advisor.decide import estimate_only
    from advisor.profile import EstimateRequest

    hardware = _hardware(gpu, gpu_memory, gpus) if (gpu or gpu_memory) else None
    try:
        req = EstimateRequest.model_validate(
            {
                "model": _model_ref(model),
                "training": _training(
                    seq_len,
                    micro_batch,
                    grad_accum,
                    rank,
                    targets,
                    optimizer,
                    precision,
                    checkpointing,
                ),
                "variant": variant,
                "combine_with": [c.strip() for c in combine_with.split(",")]
                if combine_with
                else [],
                "hardware": hardware,
                "method": "trace" if trace else "analytic",
            }
        )
        if trace:
            from loracle.settings import get_settings
            from worker.memtrace.runner import TraceRunner, traced_estimate

            settings = get_settings()
            runner = TraceRunner(
                cache_dir=settings.data_dir / "trace-cache", timeout_s=settings.trace_timeout_s
            )
            with console.status("tracing two training steps on the meta device..."):
                answer = traced_estimate(req, runner)
        else:
            answer = estimate_only(req)
    except (InvalidInput, ValidationError) as exc:
        _fail(exc)
        return
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    label = " + ".join([answer["variant"], *answer["combine_with"]])
    console.print(
        f"[bold]{label}[/bold] on {answer['model']['name']} "
        f"({answer['precision']}, {answer['method']})"
    )
    table = Table()
    table.add_column("part")
    table.add_column("GiB", justify="right")
    for part, gib in answer["breakdown"].items():
        table.add_row(part, f"{gib:.2f}")
    table.add_row("[bold]peak allocated[/bold]", f"{answer['peak_allocated_gib']:.2f}")
    table.add_row("[bold]total (card must have free)[/bold]", f"{answer['total_gib']:.2f}")
    console.print(table)
    if answer["fits"] is not None:
        console.print("fits" if answer["fits"] else "[red]does not fit[/red]")
    for line in answer["assumptions"] + answer["notes"]:
        console.print(f"  [dim]• {line}[/dim]")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
) -> None:
    """Run the HTTP API (reads the LORACLE_* environment)."""
    import uvicorn

    from api.security import configuration_problem
    from loracle.settings import get_settings

    problem = configuration_problem(get_settings())
    if problem:
        err.print(f"[red]error[/red] {problem}")
        raise typer.Exit(2)
    uvicorn.run("api.main:app", host=host, port=port, log_level="info")


def _first_run_key() -> None:
    """With no keys configured and auth not disabled, create one API key on the first
    run, keep only its digest under the data directory, and print the key once."""
    import os

    from api.security import digest, new_key
    from loracle.settings import get_settings

    settings = get_settings()
    if settings.auth_disabled or settings.api_key_hashes:
        return
    path = settings.data_dir / "api-key.sha256"
    if path.is_file():
        hashed = path.read_text().strip()
        console.print(
            f"API key: the one created on the first run (its digest is in {path}; lost it? "
            "delete that file and restart for a new one)"
        )
    else:
        key = new_key()
        hashed = digest(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(hashed + "\n")
        path.chmod(0o600)
        console.print(
            "[bold]Your API key (shown once; only its digest is stored):[/bold]\n"
            f"  export LORACLE_API_KEY={key}\n"
            'Send it as: curl -H "Authorization: Bearer $LORACLE_API_KEY" ...',
            soft_wrap=True,
        )
    os.environ["LORACLE_API_KEY_HASHES"] = hashed
    get_settings.cache_clear()


@app.command()
def worker(
    concurrency: Annotated[
        int,
        typer.Option(
            help="Jobs run at once; each pool process gets one card of CUDA_VISIBLE_DEVICES "
            "(or of all cards when it is unset), so use at most one per GPU"
        ),
    ] = 1,
    loglevel: Annotated[str, typer.Option()] = "info",
) -> None:
    """Run a Celery worker that trains jobs (reads the LORACLE_* environment)."""
    from worker.tasks import main as worker_main

    worker_main(concurrency=concurrency, loglevel=loglevel)


@app.command()
def up(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """Run the API and one worker together (the embedded default needs no server)."""
    import subprocess

    from loracle.settings import get_settings

    _first_run_key()
    settings = get_settings()
    broker = settings.broker_url or f"embedded (files under {settings.data_dir / 'broker'})"
    console.print(
        f"loracle: data in {settings.data_dir}; job store "
        f"{settings.resolved_database_url}; broker {broker}"
    )
    child = subprocess.Popen([sys.executable, "-m", "loracle.cli", "worker"])
    try:
        serve(host=host, port=port)
    finally:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()


def main() -> None:
    from pydantic import ValidationError

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except ValidationError as exc:
        if exc.title != "Settings":
            raise
        # Refused LORACLE_* settings: say which and why, without a traceback.
        for error in exc.errors():
            where = "".join(f"LORACLE_{str(p).upper()}" for p in error["loc"][:1])
            message = str(error["msg"]).removeprefix("Value error, ")
            err.print(f"[red]error[/red] {where + ': ' if where else ''}{message}")
        sys.exit(2)


if __name__ == "__main__":
    main()
