"""The ``loracle`` command line.

  loracle advise   --model meta-llama/Llama-2-7b-hf --gpu rtx-4090 --priority speed
  loracle advise   --model meta-llama/Llama-2-7b-hf --gpu a100-80gb --priority quality \
                   --quality-gap --serve-with vllm
  loracle estimate --model ./my-model --variant qlora --seq-len 4096
  loracle up       (API + one worker on the embedded default; cli/service.py)
  loracle demo     (a tiny local model and data, one job, followed; cli/demo.py)
  loracle files upload train.jsonl          (cli/files.py)
  loracle jobs submit|list|get|watch|events|download|cancel   (cli/jobs.py)
  loracle keys create|list|revoke           (cli/keys.py)
  loracle workers | calibration             (cli/fleet.py)

``advise`` and ``estimate`` run the advisor here; the job commands call the REST API. Each
prints a readable answer, or with ``--json`` exactly what the API returns for the same
request, and names the flags, not the API's fields, in its errors (cli/options.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from advisor.errors import InvalidInput
from advisor.serving import SERVER_NAMES
from cli import demo, files, fleet, jobs, keys, service
from cli.client import say_error
from cli.options import FieldMap, loc_field, split_list, target_modules

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


# The advisor's fields, each given by a parameter of `advise` or `estimate`: the request is
# built from this table, and its errors are shown under the flag that gives the field.
ADVICE_FIELDS = FieldMap(
    {
        "model": "model",
        "variant": "variant",
        "combine_with": "combine_with",
        "hardware.gpu": "gpu",
        "hardware.gpu_memory_gib": "gpu_memory",
        "hardware.gpu_count": "gpus",
        "training.seq_len": "seq_len",
        "training.micro_batch_size": "micro_batch",
        "training.gradient_accumulation_steps": "grad_accum",
        "training.lora_rank": "rank",
        "training.target_modules": "targets",
        "training.optimizer": "optimizer",
        "training.precision": "precision",
        "training.gradient_checkpointing": "checkpointing",
        "goal.priority": "priority",
        "goal.lora_quality_gap": "quality_gap",
        "goal.serve_with": "serve_with",
        # for errors only (a tuple builds no body): --model gives either of these
        "model.name": ("model",),
        "model.config": ("model",),
        "hardware": ("gpu", "gpu_memory"),
    }
)


def _fail(exc: InvalidInput | ValidationError, ctx: typer.Context) -> NoReturn:
    if isinstance(exc, InvalidInput):
        problems = [(p.field, p.message) for p in exc.problems]
    else:
        problems = [
            (loc_field(e["loc"]), f"{e['msg']} (got {e.get('input')!r})") for e in exc.errors()
        ]
    for field, message in problems:
        say_error(f"{ADVICE_FIELDS.flag(field, ctx)}: {ADVICE_FIELDS.say(message, ctx)}")
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
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Catalog name, local model dir, or config.json")],
    gpu: Annotated[str | None, typer.Option(help="GPU catalog id, e.g. rtx-4090")] = None,
    gpu_memory: Annotated[float | None, typer.Option(help="Card memory in GiB")] = None,
    gpus: Annotated[int, typer.Option(help="Number of cards")] = 1,
    priority: Annotated[str, typer.Option(help="memory | quality | speed | none")] = "none",
    quality_gap: Annotated[bool, typer.Option(help="Plain LoRA fell short on quality")] = False,
    serve_with: Annotated[
        str | None,
        typer.Option(help=f"Where the adapter will be served: {' | '.join(SERVER_NAMES)}"),
    ] = None,
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
        # the parameters by name, as the table names them
        body = ADVICE_FIELDS.body({**locals(), "targets": target_modules(targets)})
        profile = Profile.model_validate({**body, "model": _model_ref(model)})
        answer = recommend(profile).model_dump(mode="json")
    except (InvalidInput, ValidationError) as exc:
        _fail(exc, ctx)
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
        console.print(f"  [dim]• {note['text']} ({note['source']})[/dim]")


@app.command()
def estimate(
    ctx: typer.Context,
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

    values = {
        **locals(),
        "targets": target_modules(targets),
        "combine_with": split_list(combine_with) or [],
        # a card count alone describes no card: hardware is given by --gpu or --gpu-memory
        "gpus": gpus if (gpu or gpu_memory) else None,
    }
    try:
        body = ADVICE_FIELDS.body(values)
        req = EstimateRequest.model_validate(
            {**body, "model": _model_ref(model), "method": "trace" if trace else "analytic"}
        )
        if trace:
            from loracle.settings import get_settings
            from memtrace.runner import TraceRunner, traced_estimate

            settings = get_settings()
            runner = TraceRunner(
                cache_dir=settings.data_dir / "trace-cache", timeout_s=settings.trace_timeout_s
            )
            with console.status("tracing two training steps on the meta device..."):
                answer = traced_estimate(req, runner).model_dump(mode="json")
        else:
            answer = estimate_only(req).model_dump(mode="json")
    except (InvalidInput, ValidationError) as exc:
        _fail(exc, ctx)
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


app.command()(service.serve)
app.command()(service.worker)
app.command()(service.up)
app.command()(demo.demo)
app.command()(fleet.workers)
app.command()(fleet.calibration)
app.add_typer(files.app, name="files")
app.add_typer(jobs.app, name="jobs")
app.add_typer(keys.app, name="keys")


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
