"""Celery tasks of the worker. A task takes a job id and nothing else."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from celery.signals import worker_process_init

from loracle.queue import RUN_JOB, make_celery
from loracle.settings import get_settings

T = TypeVar("T")
log = logging.getLogger("loracle.worker")

app = make_celery(get_settings())


def _listed(value: str) -> list[str]:
    return [card.strip() for card in value.split(",") if card.strip()]


def visible_cards() -> list[str]:
    """The cards this worker may use: CUDA_VISIBLE_DEVICES when set, else every card
    `nvidia-smi -L` lists (asked without initialising CUDA, which would fix the visible
    set for this process), else none (a CPU worker). Asked once, by `main`."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return _listed(listed)
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


def gpu_for_process(index: int, cards: list[str]) -> str | None:
    """The one card pool process `index` trains on, or None when there is none for it."""
    return cards[index] if index < len(cards) else None


@worker_process_init.connect
def _pin_one_gpu(**_: Any) -> None:
    """`loracle worker --concurrency N` runs N jobs at once, one per card: the model is
    placed on device 0 of what a process sees, so each pool process must see one card of
    its own. billiard gives a replacement process the index of the one it replaces. CUDA
    reads the variable when it first initialises, which happens in the job, after this.

    Runs in every new pool process, that is before every job (one job per process): it
    reads the card list `main` put in CUDA_VISIBLE_DEVICES and asks nothing of the GPU."""
    from billiard.process import current_process

    index = getattr(current_process(), "index", None)
    cards = _listed(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    if index is None or not cards:
        return
    card = gpu_for_process(int(index), cards)
    if card is None:  # `main` refuses this; a worker started some other way gets a warning
        log.warning(
            "pool process %s has no card of its own (cards: %s); run one process per card",
            index,
            ",".join(cards),
        )
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = card


@app.task(name=RUN_JOB, acks_late=True)
def run_job(job_id: str) -> str:
    from worker.service import execute_job

    return on_fresh_stack(execute_job, job_id, get_settings())


def on_fresh_stack(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a new thread, waited for: its result, or its exception re-raised.

    CPython 3.11 keeps frames on a per-thread stack of 16 KiB chunks and frees a chunk
    as soon as the frame that opened it returns. In a Celery pool process the training
    loop starts some 30 frames deep, and its hottest calls happened to cross a chunk
    boundary: an mmap and a munmap of 16 KiB at every crossing, about 1,200 a second,
    each munmap a TLB shootdown that also stalls the math thread on the other core.
    Measured on the benchmark model: 3,000 page faults a second against 25 in a plain
    process, and matrix products twice as slow. A new thread starts a stack of its own,
    as shallow as a plain script's.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="job")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def main(concurrency: int = 1, loglevel: str = "info") -> None:
    """Start a worker on the configured broker (``loracle worker``)."""
    cards = visible_cards()
    if cards and concurrency > len(cards):
        # The extra processes would find no card and train on the CPU without a word.
        raise SystemExit(
            f"--concurrency {concurrency} needs {concurrency} cards, and {len(cards)} are "
            f"visible ({','.join(cards)}); run at most one job per card"
        )
    if cards:
        # Pool processes inherit the list and each takes its card from it (_pin_one_gpu).
        # The parent never initialises CUDA, so setting it here changes nothing for itself.
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(cards)
    # Import the training stack once in the parent: forked pool processes inherit
    # it instead of paying torch + transformers' import on every job. CUDA is not
    # touched here (a forked child cannot use a CUDA context made by its parent).
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    app.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
            "-Q",
            "loracle",
        ]
    )
