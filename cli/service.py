"""The service's processes: ``loracle serve`` (the API), ``loracle worker`` and ``loracle
up`` (both, on the embedded job store and broker that need no server).

Start-up is quiet (cli/logs.py filters the libraries' known noise) and says what matters:
where the data lives, which broker, that the worker is ready. ``up`` prints its last start-up
line only once the API answers and the worker has said it is ready: a framed panel with the
new API key and the line that exports it, so the one thing a new user must copy is the last
thing on the screen.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel

from cli.logs import LogFormatOption, json_celery_logging, quiet_third_parties, uvicorn_log_config

console = Console()
err = Console(stderr=True)
log = logging.getLogger("loracle")

# How long `up` waits for the worker to say it is ready: it imports torch and transformers
# first, which takes 5-30 s on a laptop and longer from a cold network disk.
WORKER_START_S = 300.0

# How long `up` waits for its worker to stop before it kills it.
WORKER_STOP_S = 120.0

HostOption = Annotated[str, typer.Option(help="Interface to bind")]
PortOption = Annotated[int, typer.Option(help="TCP port")]


def _refuse_bad_settings() -> None:
    from api.security import configuration_problem
    from loracle.settings import get_settings

    problem = configuration_problem(get_settings())
    if problem:
        err.print(f"[red]error[/red] {problem}", soft_wrap=True)
        raise typer.Exit(2)


def serve(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    log_format: LogFormatOption = "text",
) -> None:
    """Run the HTTP API (reads the LORACLE_* environment)."""
    quiet_third_parties()
    import uvicorn

    _refuse_bad_settings()
    uvicorn.run("api.main:app", host=host, port=port, log_level="info", **_log_config(log_format))


def _log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's keyword for ``log_format``: its own text set-up unless json."""
    config = uvicorn_log_config(log_format)
    return {} if config is None else {"log_config": config}


def worker(
    concurrency: Annotated[
        int,
        typer.Option(
            help="Jobs run at once; each pool process gets one card of CUDA_VISIBLE_DEVICES "
            "(or of all cards when it is unset), so use at most one per GPU"
        ),
    ] = 1,
    loglevel: Annotated[str, typer.Option()] = "info",
    log_format: LogFormatOption = "text",
    ready_file: Annotated[
        Path | None,
        typer.Option(hidden=True, help="Created once the worker takes jobs (for `up`)"),
    ] = None,
    memory_gib: Annotated[
        float | None,
        typer.Option(
            "--memory-gib",
            min=0.001,
            help="A CPU worker's memory budget in GiB, registered as its card's memory for "
            "placement (LORACLE_WORKER_MEMORY_GIB); for CPU workers and tests",
        ),
    ] = None,
    cards: Annotated[
        int | None,
        typer.Option(
            "--cards",
            min=1,
            help="A CPU worker's cards, each with the --memory-gib budget "
            "(LORACLE_WORKER_CPU_CARDS): with 2 and --concurrency 1 it takes "
            "resources.gpus: 2 jobs as 2 processes on the CPU; for CPU workers and tests",
        ),
    ] = None,
    inference: Annotated[
        bool,
        typer.Option(
            "--inference/--no-inference",
            help="Also start the inference consumer, which runs tries (POST .../try) on a "
            "queue of their own, one at a time, beside the training jobs",
        ),
    ] = True,
    inference_only: Annotated[
        bool,
        typer.Option(
            "--inference-only",
            help="Run only the inference consumer (what `loracle worker` starts beside itself)",
        ),
    ] = False,
) -> None:
    """Run a Celery worker that trains jobs, and its inference consumer that runs tries
    (reads the LORACLE_* environment)."""
    import os

    from loracle.settings import get_settings

    if memory_gib is not None:
        os.environ["LORACLE_WORKER_MEMORY_GIB"] = str(memory_gib)
    if cards is not None:
        os.environ["LORACLE_WORKER_CPU_CARDS"] = str(cards)
    get_settings.cache_clear()
    quiet_third_parties()
    if log_format == "json":
        json_celery_logging()
    if inference_only:
        _announce_ready(ready_file, "inference consumer")
        from worker.tasks import main_inference

        main_inference(loglevel=loglevel)
        return
    _announce_ready(ready_file)
    from worker.tasks import main as worker_main

    worker_main(
        concurrency=concurrency, loglevel=loglevel, inference=inference, log_format=log_format
    )


def _announce_ready(ready_file: Path | None, what: str = "worker") -> None:
    """Celery's start-up banner (20 lines of ASCII art and settings, printed outside its
    logging, so no log format applies) gives way to one log line once the worker takes
    jobs: the queue, how many at once, the broker (password hidden) and the cards."""
    import os

    from celery.signals import celeryd_init, worker_ready
    from kombu.utils.url import maybe_sanitize_url

    def no_banner(instance: Any, **_: Any) -> None:
        instance.quiet = True

    from loracle.settings import get_settings

    broker = get_settings().broker_url
    where = maybe_sanitize_url(broker) if broker else "embedded (no server)"

    def ready(sender: Any, **_: Any) -> None:
        cards = os.environ.get("CUDA_VISIBLE_DEVICES") or "none, training on the CPU"
        logging.getLogger("loracle.worker").info(
            "%s ready: queues %s, %s job(s) at once, broker %s, cards %s",
            what,
            os.environ.get("LORACLE_WORKER_QUEUES", "?"),
            sender.pool.num_processes if sender.pool else "?",
            where,
            cards,
        )
        if ready_file is not None:
            ready_file.touch()

    # weak=False: the receivers are local functions, which a weak reference would lose
    celeryd_init.connect(no_banner, weak=False)
    worker_ready.connect(ready, weak=False)


def _new_key_if_none() -> tuple[str, str] | None:
    """On the first run (no keys configured, auth not disabled): a key for the owner
    ``default``, its digest written to the key file; (key, owner). Not printed here: `up`
    prints it last."""
    from cli.keys import DEFAULT_OWNER, add_key
    from loracle import keys
    from loracle.settings import get_settings

    settings = get_settings()
    if settings.auth_disabled or keys.configured_entries(settings):
        return None
    key, _ = add_key(DEFAULT_OWNER)
    return key, DEFAULT_OWNER


def up(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    log_format: LogFormatOption = "text",
) -> None:
    """Run the API and one worker together (the embedded default needs no server)."""
    quiet_third_parties()
    import uvicorn

    from loracle.settings import get_settings

    new_key = _new_key_if_none()
    _refuse_bad_settings()
    settings = get_settings()
    config = uvicorn.Config(
        "api.main:app", host=host, port=port, log_level="info", **_log_config(log_format)
    )
    broker = settings.broker_url or f"embedded (files under {settings.data_dir / 'broker'})"
    log.info(
        "loracle: data in %s; job store %s; broker %s",
        settings.data_dir,
        settings.resolved_database_url,
        broker,
    )
    if log_format != "json":  # the text log has no root handler; this line is for people
        console.print(
            f"loracle: data in {settings.data_dir}; job store {settings.resolved_database_url}; "
            f"broker {broker}",
            soft_wrap=True,
        )
    server = uvicorn.Server(config)
    with tempfile.TemporaryDirectory(prefix="loracle-up-") as tmp:
        ready = Path(tmp) / "worker-ready"
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "worker",
                "--log-format",
                log_format,
                "--ready-file",
                str(ready),
            ]
        )
        failed: list[str] = []
        watcher = threading.Thread(
            target=_when_ready,
            args=(server, child, ready, f"http://{host}:{port}", new_key, failed),
            daemon=True,
        )
        watcher.start()
        try:
            server.run()
        finally:
            child.terminate()
            try:
                # A worker with a running job first checkpoints it and requeues it
                # (worker/shutdown.py): one step and one checkpoint write.
                child.wait(timeout=WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                child.kill()
    if failed:
        err.print(f"[red]error[/red] {failed[0]}", soft_wrap=True)
        raise typer.Exit(1)


def _when_ready(
    server: Any,
    child: subprocess.Popen[bytes],
    ready: Path,
    url: str,
    new_key: tuple[str, str] | None,
    failed: list[str],
) -> None:
    """Print the ready panel once the API answers and the worker takes jobs; stop the API
    when the worker dies first or never gets ready."""
    deadline = time.monotonic() + WORKER_START_S
    while not (server.started and ready.exists()):
        code = child.poll()
        if code is not None or time.monotonic() > deadline:
            failed.append(
                f"the worker exited with code {code} before it was ready; its log is above"
                if code is not None
                else f"the worker was not ready after {WORKER_START_S:.0f} s; its log is above"
            )
            server.should_exit = True
            return
        if server.should_exit:
            return
        time.sleep(0.1)
    console.print(_ready_panel(url, new_key), soft_wrap=True)


def _ready_panel(url: str, new_key: tuple[str, str] | None) -> Panel:
    from cli.keys import key_panel
    from loracle import keys
    from loracle.settings import get_settings

    if new_key is not None:
        panel = key_panel(*new_key)
        panel.title = f"loracle is ready on {url}; your API key, shown once"
        return panel
    settings = get_settings()
    if settings.auth_disabled:
        what = "authentication is disabled (LORACLE_AUTH_DISABLED=1)"
    elif settings.api_key_hashes:
        what = "API keys: the digests in LORACLE_API_KEY_HASHES"
    else:
        count = len(keys.configured_entries(settings))
        what = (
            f"API keys: {count} in {keys.key_file(settings)} (loracle keys list); "
            "lost yours? loracle keys create"
        )
    return Panel(what, title=f"loracle is ready on {url}", title_align="left", expand=False)
