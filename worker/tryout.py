"""A try on this worker: take the try the API stored, generate on this machine
(worker.inference), and record the completions or the error code. Called by the inference
consumer's task (worker.tasks.try_job), and by tests as the task would.

Worker-local only: the adapter is read from the API's data directory
(`$LORACLE_DATA_DIR/jobs/<job>/adapter`). A worker on another host (LORACLE_API_URL set) has
no such directory and refuses the try with `remote_worker_unsupported`, as it refuses a merge:
run a worker on the API's data directory (or a shared volume) for tries.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from loracle import jobfiles
from loracle.model_source import is_local, resolve_model_source
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store import tries
from loracle.store.db import session
from worker.inference import Stopped, generate_side_by_side
from worker.merge import job_adapter_plan
from worker.service import worker_name

log = logging.getLogger("loracle.worker")


class RemoteTryUnsupported(RuntimeError):
    """A try sent to a worker without the API's data directory."""


class JobNotSucceeded(RuntimeError):
    """The job has no adapter to try (it is no longer succeeded)."""


# The error codes of a failed try (`error.code` of GET .../tries/{id}), by exception.
TRY_ERRORS: dict[str, str] = {
    "RemoteTryUnsupported": "remote_worker_unsupported",
    "JobNotSucceeded": "job_not_succeeded",
    "ModelSourceError": "model_source",
    "PlanError": "invalid_plan",
    "FileNotFoundError": "adapter_missing",
    "PromptTooLong": "prompt_too_long",
    "OutOfMemoryError": "out_of_memory",
    "MemoryError": "out_of_memory",
}


def device_with_most_room() -> tuple[str, int]:
    """Where this try runs: the CPU without a visible card; else the visible card with the
    most free memory now (nvidia-smi, which does not initialise CUDA), as torch numbers it
    (its position in CUDA_VISIBLE_DEVICES). A worker's training jobs hold their own cards; a
    try goes where there is room, and waits behind no training job."""
    from worker.fleet import gpu_cards
    from worker.modeling import detect_device

    if detect_device() != "cuda":
        return "cpu", 0
    visible = [c.strip() for c in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if c]
    cards = gpu_cards(visible)
    if not cards:
        return "cuda", 0
    best = max(cards, key=lambda c: float(c["free_gib"]))
    return "cuda", visible.index(best["index"]) if visible else int(best["index"])


def execute_try(try_id: str, settings: Settings) -> str:
    """Generate a queued try's completions and record them (`succeeded`) or its error code
    (`failed`); returns the try's status as this process leaves it. Safe for any delivery: a
    try no longer queued (another delivery took it, it timed out) is left alone (`skipped`)."""
    url = settings.resolved_database_url
    with session(url) as s:
        tries.expire(s, settings.try_timeout_s)
        row = tries.get_try(s, try_id)
        if row is None or row.status != tries.QUEUED or not tries.start(s, try_id, worker_name()):
            log.info("try %s: not queued any more (taken, or timed out); skipped", try_id)
            return "skipped"
        job = store.get_job(s, row.job_id, any_owner=True)
        request: dict[str, Any] = dict(row.request)
        age = (store.store_now(s) - row.created_at).total_seconds()
        job_id, job_status = row.job_id, job.status if job is not None else "gone"
    deadline = time.monotonic() + max(0.0, settings.try_timeout_s - age)
    try:
        if settings.api_url:
            raise RemoteTryUnsupported(
                "this worker shares no disk with the API (LORACLE_API_URL is set): the job's "
                "adapter is on the API's side, and tries run only on a worker on the API's data "
                "directory; start one there (loracle worker)"
            )
        if job_status != store.SUCCEEDED:
            raise JobNotSucceeded(f"job {job_id} is {job_status}: only a succeeded job is tried")
        adapter = jobfiles.job_dir(settings.data_dir, job_id) / jobfiles.ADAPTER_DIRNAME
        plan = job_adapter_plan(adapter)
        if is_local(plan.model):  # checked again, as before training: inside a root
            model = resolve_model_source(plan.model, settings.allowed_model_roots)
            plan = plan.model_copy(update={"model": model})
        device, card = device_with_most_room()
        result = generate_side_by_side(
            plan,
            adapter,
            list(request["prompts"]),
            int(request["max_new_tokens"]),
            float(request["temperature"]),
            int(request["seed"]),
            device=device,
            card=card,
            deadline=deadline,
        )
    except Exception as exc:
        if isinstance(exc, Stopped):
            code = "try_timeout" if time.monotonic() > deadline else "worker_shutdown"
            message = f"{exc}; ask again"
        else:
            code = TRY_ERRORS.get(type(exc).__name__, "try_failed")
            message = str(exc)
            if code == "try_failed":
                log.exception("try %s of %s failed", try_id, job_id)
        with session(url) as s:
            tries.fail(s, try_id, code, message)
        return "failed"
    with session(url) as s:
        if not tries.succeed(s, try_id, result.model_dump(mode="json")):
            return "failed"  # timed out meanwhile: the API answered `try_timeout`
    log.info(
        "try %s of %s: %d prompt(s) on %s, loaded in %.2f s, generated in %.2f s",
        try_id,
        job_id,
        len(result.completions),
        result.device,
        result.load_seconds,
        result.generate_seconds,
    )
    return "succeeded"
