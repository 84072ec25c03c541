"""Submitting, reading and steering jobs."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from advisor.architecture import Architecture, from_hf_config
from advisor.catalog.models import find_model
from advisor.decide import recommend
from advisor.errors import InvalidInput, Problem
from advisor.hyperparams import suggest
from advisor.memory import GIB, estimate
from advisor.profile import Profile, TrainingSettings
from advisor.variants import combination
from api.errors import ApiError
from api.jobs.schemas import Hyperparameters, JobCreate
from api.paths import check_local_path, check_plain_name, looks_local
from loracle.queue import RUN_JOB, waiting_job_ids
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.db import session
from loracle.store.models import EventRow, JobRow, now
from worker.errors import ModelSourceError
from worker.modeling import resolve_model_source
from worker.plan import TrainingPlan

log = logging.getLogger("loracle.api")


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def job_out(row: JobRow) -> dict[str, Any]:
    total = row.total_steps
    progress = 1.0 if row.status == store.SUCCEEDED else (row.step / total if total else 0.0)
    measured = row.measured_peak or None
    measured_gib = None
    if measured:
        peak = measured.get("allocated_bytes") or measured.get("rss_growth_bytes")
        measured_gib = round(peak / GIB, 4) if peak else None
    est = row.estimate or None
    return {
        "id": row.id,
        "object": "fine_tuning.job",
        "model": row.model,
        "training_file": row.training_file,
        "validation_file": row.validation_file,
        "variant": row.variant,
        "combine_with": list(row.combine_with or []),
        "requested_variant": row.requested_variant,
        "status": row.status,
        "created_at": _ts(row.created_at),
        "started_at": _ts(row.started_at),
        "finished_at": _ts(row.finished_at),
        "step": row.step,
        "total_steps": total,
        "progress": round(min(max(progress, 0.0), 1.0), 4),
        "eta_seconds": row.eta_seconds,
        "loss": row.loss,
        "tokens_per_second": row.tokens_per_second,
        "estimated_peak_gib": est.get("peak_allocated_gib") if est else None,
        "measured_peak_gib": measured_gib,
        "measured_peak": measured,
        "hyperparameters": _hyperparameters(row),
        "decision": row.decision,
        "estimate": est,
        "error": (
            {"type": row.error_type, "message": row.error_message or ""} if row.error_type else None
        ),
        "attempts": row.attempts,
        "cancel_requested": row.cancel_requested_at is not None,
        "cancel_outcome": row.cancel_outcome,
        "worker": row.worker,
    }


def _hyperparameters(row: JobRow) -> dict[str, Any]:
    """What the job asked for until a worker resolves its plan; every value after."""
    if row.plan:
        return {k: row.plan[k] for k in Hyperparameters.model_fields if k in row.plan}
    return dict(row.hyperparameters or {})


def _architecture(model: str, resolved: str) -> tuple[Architecture | None, dict[str, Any]]:
    """The architecture when we can know it without a network: a local directory's
    config.json, or the catalog entry of a hub id."""
    if resolved != model or Path(resolved).is_dir():
        path = Path(resolved) / "config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(
                [Problem("model", f"the model's config.json is not readable JSON ({exc})", model)]
            ) from None
        if not isinstance(config, dict):
            raise InvalidInput(
                [Problem("model", "the model's config.json must hold a JSON object", model)]
            )
        return from_hf_config(config), {"config": config}
    try:
        entry = find_model(model)
    except InvalidInput:
        return None, {}
    return entry.architecture, {"name": entry.id}


def _advisor_training(hp: dict[str, Any]) -> TrainingSettings:
    """The advisor's view of a job's settings, with the worker's defaults for what
    the job leaves unset."""
    defaults = TrainingPlan.model_fields

    def get(key: str) -> Any:
        value = hp.get(key)
        return defaults[key].default if value is None else value

    precision = get("precision")
    optimizer = get("optimizer")
    return TrainingSettings(
        seq_len=get("seq_len"),
        micro_batch_size=get("micro_batch_size"),
        gradient_accumulation_steps=get("gradient_accumulation_steps"),
        gradient_checkpointing=get("gradient_checkpointing"),
        lora_rank=get("lora_rank"),
        target_modules=get("target_modules"),
        optimizer=optimizer or "adamw",
        precision="bf16" if precision in (None, "auto") else precision,
    )


def _check_plan(body: JobCreate, hp: dict[str, Any]) -> list[Problem]:
    """What the worker's TrainingPlan would refuse, found at submission: a job the worker
    cannot run is a 422 now, never a job that fails later. The paths are placeholders (the
    worker fills them in from the store); variant 'auto' is checked with plain LoRA, whose
    hyperparameters every variant the advisor can choose accepts."""
    auto = body.variant == "auto"
    try:
        TrainingPlan.model_validate(
            {
                **hp,
                "model": body.model,
                "train_file": "train.jsonl",
                "output_dir": "run",
                "variant": "lora" if auto else body.variant,
                "combine_with": [] if auto else list(body.combine_with),
            }
        )
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "hyperparameters"
            field = (
                name if name in ("variant", "combine_with", "model") else f"hyperparameters.{name}"
            )
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(Problem(field, message, error.get("input")))
        return problems
    return []


def create_job(
    s: Session, settings: Settings, body: JobCreate, owner: str | None, job_id: str | None = None
) -> JobRow:
    problems: list[Problem] = []
    for field in ("training_file", "validation_file"):
        file_id = getattr(body, field)
        if file_id is not None and store.get_file(s, file_id, owner) is None:
            problems.append(
                Problem(field, f"no file {file_id!r}; upload it with POST /v1/files first", file_id)
            )
    resolved = body.model
    try:
        if looks_local(body.model):
            check_local_path(body.model, "model", settings.allowed_model_roots)
        resolved = resolve_model_source(body.model, settings.allowed_model_roots)
    except InvalidInput as exc:
        problems += exc.problems
    except ModelSourceError as exc:
        problems.append(Problem("model", str(exc), body.model))
    hp = body.hyperparameters.model_dump(exclude_none=True)
    problems += _check_plan(body, hp)
    if problems:
        raise InvalidInput(problems)

    arch, model_ref = _architecture(body.model, resolved)
    training = _advisor_training(hp)
    variant, combine = body.variant, list(body.combine_with)
    decision = None
    if body.variant == "auto":
        if arch is None:
            raise InvalidInput(
                [
                    Problem(
                        "variant",
                        f"'auto' needs the architecture of {body.model!r}, which is neither in "
                        "the catalog nor a local directory; name the variant instead",
                        "auto",
                    )
                ]
            )
        hardware = body.profile.hardware if body.profile else None
        if hardware is None and (settings.worker_gpu or settings.worker_gpu_memory_gib):
            hardware_dict = {
                "gpu": settings.worker_gpu,
                "gpu_memory_gib": settings.worker_gpu_memory_gib,
            }
        elif hardware is not None:
            hardware_dict = hardware.model_dump()
        else:
            raise InvalidInput(
                [
                    Problem(
                        "profile.hardware",
                        "variant 'auto' needs the card the job runs on: give profile.hardware "
                        "(gpu or gpu_memory_gib), or set LORACLE_WORKER_GPU on the server",
                    )
                ]
            )
        goal = body.profile.goal if body.profile else None
        try:
            profile = Profile.model_validate(
                {
                    "hardware": hardware_dict,
                    "model": model_ref,
                    "training": training.model_dump(),
                    "goal": goal.model_dump() if goal else {},
                }
            )
        except ValidationError as exc:  # e.g. a local config.json the advisor cannot read
            raise InvalidInput(
                [
                    Problem(
                        "model" if e["loc"][:1] == ("model",) else "profile",
                        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}",
                    )
                    for e in exc.errors()
                ]
            ) from None
        decision = recommend(profile)
        if not decision["fits"]:
            raise InvalidInput(
                [
                    Problem(
                        "profile.hardware",
                        f"nothing fits: {decision['label']} needs "
                        f"{decision['estimate']['total_gib']:.1f} GiB on a "
                        f"{decision['hardware']['memory_gib']:g} GiB card; "
                        + (
                            "try: " + "; ".join(r["change"] for r in decision["remedies"][:3])
                            if decision["remedies"]
                            else (decision["verdict"] or "choose a smaller model")
                        ),
                    )
                ]
            )
        variant, combine = decision["variant"], decision["combine_with"]
    combo = combination(variant, combine)  # type: ignore[arg-type]
    est = None
    if arch is not None:
        dropout = hp.get("lora_dropout")
        est = estimate(arch, training, combo, lora_dropout=dropout).as_dict()
        est["method"] = "analytic"

    # What the job leaves unset and the advisor has an opinion on comes from the advisor
    # (DoRA without dropout, LoRA+'s lower base rate, the learning rate by model size,
    # warmup): the same hyperparameters POST /v1/recommendations answers.
    filled: dict[str, Any] = {}
    if arch is not None:
        suggested = suggest(arch, training, combo, training.precision)
        for key, value in (
            ("learning_rate", suggested["learning_rate"]),
            ("lora_dropout", suggested["lora_config"]["lora_dropout"]),
            ("warmup_ratio", suggested["warmup_ratio"]),
            ("lr_scheduler", suggested["lr_scheduler"]),
        ):
            if key not in hp:
                hp[key] = filled[key] = value
    elif combo.dora and "lora_dropout" not in hp:
        hp["lora_dropout"] = filled["lora_dropout"] = 0.0
    row = store.add_job(
        s,
        id=job_id or store.new_id("job"),
        owner=owner,
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        variant=variant,
        combine_with=list(combo.combine_with),
        requested_variant=body.variant,
        hyperparameters=hp,
        profile=body.profile.model_dump(mode="json") if body.profile else None,
        decision=decision,
        estimate=est,
        # Marked as being sent in the transaction that creates it: the dispatcher sends
        # only jobs without the mark, so it cannot send this one a second time while the
        # request's own send is under way. A failed send clears the mark (`enqueue`); a
        # request that dies before sending leaves it, and the job is found as a lost
        # message (`mark_lost_messages`) and sent again.
        enqueued_at=now(),
    )
    if filled:
        store.add_event(
            s,
            row.id,
            "defaults",
            "advisor defaults for what the job left unset: "
            + ", ".join(f"{k}={v}" for k, v in filled.items()),
            filled,
        )
    if decision is not None:
        store.add_event(
            s,
            row.id,
            "decision",
            f"advisor chose {decision['label']}",
            {"variant": variant, "combine_with": combine, "path": decision["decision_path"]},
        )
    return row


def enqueue(settings: Settings, queue: Celery, job_id: str) -> bool:
    """Hand a committed job to the broker. False when the broker is unreachable:
    the job stays queued in the store and the dispatcher sends it later."""
    try:
        queue.send_task(RUN_JOB, args=[job_id])
    except Exception as exc:  # any broker failure: the store keeps the job
        log.warning("broker unavailable for %s: %s", job_id, exc)
        with session(settings.resolved_database_url) as s:
            # Unmarked: the dispatcher sends it once the broker is back.
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == store.QUEUED)
                .values(enqueued_at=None)
            )
            told = s.scalar(
                select(EventRow.pk).where(
                    EventRow.job_id == job_id, EventRow.type == "broker_unavailable"
                )
            )
            if told is None:  # once per job, not once per dispatcher round
                store.add_event(
                    s,
                    job_id,
                    "broker_unavailable",
                    "broker unavailable; the job stays queued and is sent when it is back",
                    {"error": str(exc)},
                    "warning",
                )
        return False
    with session(settings.resolved_database_url) as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(enqueued_at=now()))
    return True


BROKER_EPOCH_KEY = "loracle:broker-epoch"


def broker_restarted(settings: Settings) -> bool:
    """True when the Redis broker lost its data since we last looked (restarted
    without persistence): the messages of queued jobs are gone and must be sent
    again. A marker key we set disappears with them."""
    if not settings.broker_url or not settings.broker_url.startswith(("redis://", "rediss://")):
        return False
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.set(BROKER_EPOCH_KEY, str(now().timestamp()), nx=True))
    finally:
        client.close()


def mark_lost_messages(settings: Settings) -> list[str]:
    """Queued jobs whose message is gone: sent more than ``lost_message_after_s`` ago,
    still queued, and not waiting in the broker's queue. A worker took the message and
    died before it could take the job's lease (a pool process killed, or the whole worker
    killed with messages it had reserved): Celery acknowledges the message of a dead
    process (``task_reject_on_worker_lost=False``, see loracle/queue.py) and the embedded
    broker deletes a message file when it is read, so no broker sends it again. Marks them
    for sending; returns their ids.

    A job whose message a worker took in the same instant, before its lease, can be sent
    twice; the second delivery finds the lease taken and exits without training."""
    cutoff = now() - timedelta(seconds=settings.lost_message_after_s)
    url = settings.resolved_database_url
    with session(url) as s:
        stale = list(
            s.scalars(
                select(JobRow.id).where(JobRow.status == store.QUEUED, JobRow.enqueued_at < cutoff)
            )
        )
    if not stale:
        return []
    waiting = waiting_job_ids(settings)
    lost = []
    with session(url) as s:
        for job_id in stale:
            if job_id in waiting:
                continue
            result = s.execute(
                update(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.status == store.QUEUED,
                    JobRow.enqueued_at < cutoff,
                )
                .values(enqueued_at=None)
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0):
                lost.append(job_id)
                store.add_event(
                    s,
                    job_id,
                    "message_lost",
                    "the broker no longer holds this job's message (a worker took it and "
                    "stopped before starting the job); sending it again",
                    {"sent_before": cutoff.isoformat()},
                    "warning",
                )
    return lost


def dispatch_pending(settings: Settings, queue: Celery) -> int:
    """One round of the dispatcher: requeue jobs whose worker stopped heart-beating
    (or fail them after max_attempts), find queued jobs whose message was lost, then
    send every queued job the broker does not hold. Returns how many were sent."""
    with session(settings.resolved_database_url) as s:
        for job_id, status in store.reap(s, settings.max_attempts):
            log.warning("job %s: worker lost, now %s", job_id, status)
    try:
        if broker_restarted(settings):
            with session(settings.resolved_database_url) as s:
                s.execute(
                    update(JobRow).where(JobRow.status == store.QUEUED).values(enqueued_at=None)
                )
        for job_id in mark_lost_messages(settings):
            log.warning("job %s: its message was lost; sending it again", job_id)
    except Exception as exc:  # broker down: the sends below fail and are retried later
        log.warning("broker check failed: %s", exc)
    with session(settings.resolved_database_url) as s:
        ids = list(
            s.scalars(
                select(JobRow.id)
                .where(JobRow.status == store.QUEUED, JobRow.enqueued_at.is_(None))
                .order_by(JobRow.pk)
                .limit(100)
            )
        )
    sent = 0
    for job_id in ids:
        if not enqueue(settings, queue, job_id):
            # The broker is down: every further publish would wait its ~2 s retry too, and
            # a round of 100 would hold back the next reap of dead workers' jobs by minutes.
            # The rest wait for the next round.
            break
        sent += 1
    return sent


def artifacts_dir(settings: Settings, job_id: str) -> Path:
    return Path(settings.data_dir) / "jobs" / job_id / "adapter"


def list_artifacts(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    folder = artifacts_dir(settings, job_id)
    if not folder.is_dir():
        return []
    return [
        {"name": p.name, "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.is_symlink()
    ]


def artifact_path(settings: Settings, job_id: str, name: str) -> Path:
    """Only names the listing gives: a name is never joined into a path unchecked."""
    check_plain_name(name, "name")
    for entry in list_artifacts(settings, job_id):
        if entry["name"] == name:
            return artifacts_dir(settings, job_id) / name
    raise ApiError(
        404,
        "not_found",
        f"job {job_id} has no artifact {name!r}; list them with GET /v1/jobs/{job_id}/artifacts",
    )
