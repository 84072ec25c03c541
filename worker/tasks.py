"""Celery tasks of the worker. A task takes a job id and nothing else."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery.signals import worker_process_init, worker_shutting_down

from advisor.memory import WORKER_ALLOCATOR_CONF
from loracle import placement
from loracle.queue import MERGE_JOB, RUN_JOB, TRY_JOB, make_celery
from loracle.settings import get_settings
from worker import shutdown

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
    reads the card list `main` put in CUDA_VISIBLE_DEVICES and asks nothing of the GPU.

    A worker that runs one job at a time (`--concurrency 1`) pins nothing: its job may ask
    for all its cards (`resources.gpus`, run by `worker.distributed`, which gives a one-card
    job the first)."""
    from billiard.process import current_process

    index = getattr(current_process(), "index", None)
    cards = _listed(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    if index is None or not cards or os.environ.get("LORACLE_WORKER_CONCURRENCY") == "1":
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


@worker_shutting_down.connect
def _forward_shutdown(sig: str, how: str, **_: Any) -> None:
    """In the worker's main process: a SIGTERM sent to it alone reaches the pool too, and its
    inference consumer. In the inference consumer: the try being generated stops at its next
    token."""
    shutdown.forward_to_pool(sig, how)
    _stop_inference_consumer()
    # Looked up, not imported: no import in a signal handler. Loaded in the inference
    # consumer (main_inference imports it), where alone it has work to stop.
    inference = sys.modules.get("worker.inference")
    if inference is not None:
        inference.request_stop()


@app.task(name=RUN_JOB, acks_late=True)
def run_job(job_id: str) -> str:
    from worker.service import execute_job

    # SIGTERM and SIGINT ask the job to stop at its next step end, with a checkpoint, and go
    # back to the queue (worker/shutdown.py), rather than kill it. Here, on the pool process's
    # main thread as the job starts: billiard sets its own handlers after worker_process_init.
    shutdown.install_in_pool_process()
    return on_fresh_stack(execute_job, job_id, get_settings())


@app.task(name=MERGE_JOB, acks_late=True)
def merge_job(job_id: str) -> str:
    """Merge a succeeded job's adapter into its base, as the job's newest `merge_requested`
    event asks (worker.service.execute_merge). No shutdown handling: a merge is seconds to
    minutes and writes its output atomically, so one cut short leaves nothing half-written;
    its `merge_started` stays the merge's last word, and the API takes a new request once that
    is an hour old (api/jobs/service.py MERGE_LOST_AFTER_S)."""
    from worker.service import execute_merge

    return on_fresh_stack(execute_merge, job_id, get_settings())


@app.task(name=TRY_JOB, acks_late=False)
def try_job(try_id: str) -> str:
    """Generate a try's completions, base and adapter side by side (worker.tryout.execute_try),
    on the inference consumer (`loracle worker --inference-only`). Acknowledged on receipt,
    not at the end: a try whose consumer died is not delivered again but answered as failed
    (`try_timeout`) once LORACLE_TRY_TIMEOUT_S has passed, and the user asks again."""
    from worker.tryout import execute_try

    return on_fresh_stack(execute_try, try_id, get_settings())


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


def apply_allocator_conf() -> None:
    """The CUDA caching allocator's setting the advisor's estimates model
    (advisor.memory.WORKER_ALLOCATOR_CONF; why: docs/memory.md), set before anything
    initialises CUDA, so that pool processes inherit it. A setting the operator chose is
    kept, with a warning that the estimates assume another."""
    chosen = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    if chosen is None:
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = WORKER_ALLOCATOR_CONF
    elif chosen != WORKER_ALLOCATOR_CONF:
        log.warning(
            "PYTORCH_CUDA_ALLOC_CONF=%s is kept; the memory estimates assume %s "
            "(docs/memory.md), so whole-run figures may differ",
            chosen,
            WORKER_ALLOCATOR_CONF,
        )


# -- the inference consumer ----------------------------------------------------------------

# How long the worker waits for its inference consumer to stop before it kills it: the
# consumer stops generating at its next token, but a model still loading cannot be cut short.
INFERENCE_STOP_S = 20.0

_consumer: dict[str, subprocess.Popen[bytes]] = {}
_consumer_signalled = threading.Event()
_consumer_lock = threading.Lock()


def start_inference_consumer(loglevel: str, log_format: str) -> subprocess.Popen[bytes]:
    """`loracle worker --inference-only` as a child of this worker, with its environment (the
    card class, the cards): it takes the tries of this worker's class, one at a time, on a
    queue of their own (loracle.placement.inference_queue), so a try never waits behind a
    training job, and stops when this worker stops (`stop_inference_consumer`; it also stops
    by itself when this process is gone). In this worker's process group: a signal to the
    group reaches it directly."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "worker",
            "--inference-only",
            "--loglevel",
            loglevel,
            "--log-format",
            log_format,
        ],
        env={**os.environ, "LORACLE_INFERENCE_PARENT": str(os.getpid())},
    )
    _consumer["child"] = child
    return child


def supervise_inference_consumer(loglevel: str, log_format: str) -> threading.Thread:
    """Start another inference consumer when this one exits while the worker runs (killed
    for its memory by a model too large, or stopped alone), after 1 s, then 2, 4, ... at most
    60 s apart while it keeps exiting within a minute: tries are not left without a consumer
    until their timeout. Returns the watching thread (a daemon of the worker's main
    process)."""

    def watch() -> None:
        delay, since = 1.0, time.monotonic()
        while not _consumer_signalled.wait(1.0):
            code = _consumer["child"].poll()  # reaps an exited one
            if code is None:
                continue
            if time.monotonic() - since > 60:
                delay = 1.0
            log.warning(
                "the inference consumer exited (code %s); starting another in %.0f s",
                code,
                delay,
            )
            if _consumer_signalled.wait(delay):
                return
            with _consumer_lock:
                if _consumer_signalled.is_set():
                    return
                start_inference_consumer(loglevel, log_format)
            delay, since = min(delay * 2, 60.0), time.monotonic()

    thread = threading.Thread(target=watch, name="inference-consumer", daemon=True)
    thread.start()
    return thread


def _stop_inference_consumer() -> None:
    """Ask the inference consumer to stop (a warm shutdown), once, and start no other. Runs
    in a signal handler of the main thread; the lock is only ever held by the supervising
    thread, for one `Popen`."""
    if "child" not in _consumer or _consumer_signalled.is_set():
        return
    with _consumer_lock:
        _consumer_signalled.set()
        child = _consumer["child"]
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            child.send_signal(signal.SIGTERM)


def stop_inference_consumer(wait_s: float = INFERENCE_STOP_S) -> None:
    """Stop the inference consumer and wait for it; killed after `wait_s`."""
    if "child" not in _consumer:
        return
    _stop_inference_consumer()
    child = _consumer["child"]
    try:
        child.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        log.warning("the inference consumer did not stop within %.0f s; killed", wait_s)
        child.kill()
        child.wait()


def _exit_with_parent(parent: int) -> None:
    """In the inference consumer: stop (warm, as at a SIGTERM) once the worker that started it
    is gone, even killed with SIGKILL, rather than take tries alone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("the worker that started this inference consumer is gone; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main_inference(loglevel: str = "info") -> None:
    """Start the inference consumer (``loracle worker --inference-only``): a solo-pool Celery
    worker on the inference queue of this machine's card class. `loracle worker` starts one
    beside its training pool; started alone, it finds the card class itself."""
    settings = get_settings()
    klass = os.environ.get("LORACLE_WORKER_CARD_CLASS")
    if not klass:
        from worker import fleet

        klass = fleet.describe(settings, visible_cards(), 1).card_class
    parent = os.environ.get("LORACLE_INFERENCE_PARENT")
    if parent:
        _exit_with_parent(int(parent))
    apply_allocator_conf()
    # The training stack, imported before the first try rather than by it: 5-30 s on a busy
    # machine that the first try would otherwise wait (measured: 27 s of a 30 s try on two
    # cores that a training job kept busy). CUDA is not initialised here.
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import worker.tryout  # noqa: F401

    queue = placement.inference_queue(klass)
    os.environ["LORACLE_WORKER_QUEUES"] = queue  # for the ready line
    app.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            # One try at a time, in this process: a try's model is loaded, used and freed
            # before the next is taken, and there is no pool process to fork.
            "--pool=solo",
            "--concurrency=1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"infer-{os.getpid()}@%h",
            "-Q",
            queue,
        ]
    )


def main(
    concurrency: int = 1, loglevel: str = "info", inference: bool = True, log_format: str = "text"
) -> None:
    """Start a worker on the configured broker (``loracle worker``), and its inference
    consumer (`start_inference_consumer`) unless `inference` is False."""
    cards = visible_cards()
    settings = get_settings()
    if not cards:
        # The first line a user reads: jobs here run on the CPU, whatever their estimate says.
        budget = settings.worker_memory_gib
        log.warning(
            "no CUDA GPU visible to this worker (CUDA_VISIBLE_DEVICES=%s, nvidia-smi lists "
            "none): jobs run on the CPU in fp32%s, and their memory is measured as the "
            "process's resident set growth",
            os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
            f", within a {budget:g} GiB budget" if budget else "",
        )
    apply_allocator_conf()
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

    from worker import fleet

    reg = fleet.describe(settings, cards, concurrency)
    fleet.register(settings, reg, concurrency)
    heartbeat = fleet.Heartbeat(settings, reg, concurrency).start()
    # Pool processes inherit these, and say who received each job (the `arrived` event).
    os.environ["LORACLE_WORKER_ID"] = reg.worker_id
    os.environ["LORACLE_WORKER_CARD_CLASS"] = reg.card_class
    os.environ["LORACLE_WORKER_QUEUES"] = ",".join(reg.queues)
    os.environ["LORACLE_WORKER_CONCURRENCY"] = str(concurrency)  # read by _pin_one_gpu
    log.info(
        "worker %s registered: %s (%s), queues %s",
        reg.worker_id,
        reg.card_class,
        ", ".join(f"{c['name']} {c['total_gib']:g} GiB" for c in reg.cards),
        ",".join(reg.queues),
    )
    if inference:
        start_inference_consumer(loglevel, log_format)
        supervise_inference_consumer(loglevel, log_format)
    try:
        app.worker_main(
            [
                "worker",
                f"--loglevel={loglevel}",
                f"--concurrency={concurrency}",
                "--pool=prefork",
                "--without-gossip",
                "--without-mingle",
                "-Q",
                ",".join(reg.queues),
            ]
        )
    finally:
        stop_inference_consumer()
        heartbeat.stop()
