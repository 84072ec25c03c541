"""Submitting, reading and steering jobs.

`create_job` reads top to bottom as three steps: `validate` (every problem of the request at
once: files, model source, what the worker's plan would refuse), `choose_variant` (the
advisor's decision for variant 'auto'), and `fill_defaults` (what the job leaves unset and
the advisor has an opinion on). Then the job is stored; `api.jobs.endpoints` commits it and
hands it to the dispatcher.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from advisor.answers import Recommendation
from advisor.architecture import Architecture, from_hf_config
from advisor.catalog.models import find_model
from advisor.decide import recommend
from advisor.hyperparams import suggest
from advisor.memory import GIB, estimate
from advisor.profile import Profile, TrainingSettings
from advisor.variants import DEFAULT_LORA_DROPOUT, Combination, combination
from api.errors import ApiError
from api.jobs import knobs
from api.jobs.schemas import (
    ArtifactOut,
    CheckpointMetrics,
    CheckpointOut,
    ErrorInfo,
    Hyperparameters,
    JobCreate,
    JobMemory,
    JobOut,
    MeasuredMemory,
    MergeCreate,
    MergeOut,
)
from api.paths import check_local_path, check_plain_name, refuse_tricks
from loracle import calibration, jobfiles, placement
from loracle.errors import InvalidInput, ModelSourceError, Problem
from loracle.hub import check_hub_model
from loracle.model_source import is_hub_id, locate_model, resolve_model_source
from loracle.plan import TrainingPlan
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store import workers
from loracle.store.models import JobRow, now


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def job_out(row: JobRow, evaluation: dict[str, Any] | None = None) -> JobOut:
    """The job as the API shows it. `evaluation`: its base-vs-adapter comparison
    (`job_evaluation`), read for one job at a time, not for lists."""
    total = row.total_steps
    progress = 1.0 if row.status == store.SUCCEEDED else (row.step / total if total else 0.0)
    measured = row.measured_peak or None
    est = row.estimate or None
    memory = job_memory(est, row.placement, measured)
    hp = knobs.reported(_hyperparameters(row), (row.method or {}).get("learning_rate_base"))
    openai_hp = {k: hp[k] for k in knobs.OPENAI_KNOBS}
    return JobOut(
        id=row.id,
        model=row.model,
        training_file=row.training_file,
        validation_file=row.validation_file,
        variant=row.variant,
        combine_with=list(row.combine_with or []),
        requested_variant=row.requested_variant,
        status=row.status,
        created_at=_ts(row.created_at) or 0,
        started_at=_ts(row.started_at),
        finished_at=_ts(row.finished_at),
        step=row.step,
        total_steps=total,
        progress=round(min(max(progress, 0.0), 1.0), 4),
        eta_seconds=row.eta_seconds,
        loss=row.loss,
        tokens_per_second=row.tokens_per_second,
        estimated_peak_gib=est.get("peak_allocated_gib") if est else None,
        measured_peak_gib=memory.measured.peak_allocated_gib if memory.measured else None,
        measured_peak=measured,
        device=memory.measured.device if memory.measured else None,
        device_name=memory.measured.device_name if memory.measured else None,
        precision=(measured or {}).get("precision"),
        memory=memory,
        hyperparameters=hp,
        decision=row.decision,
        estimate=est,
        error=(
            ErrorInfo(code=row.error_type, type=row.error_type, message=row.error_message or "")
            if row.error_type
            else None
        ),
        attempts=row.attempts,
        cancel_requested=row.cancel_requested_at is not None,
        cancel_outcome=row.cancel_outcome,
        resources=dict(row.resources or {"gpus": 1}),
        placement=_public_placement(row.placement),
        worker=row.worker,
        fine_tuned_model=(
            f"ft:{row.model}:{row.suffix or 'loracle'}:{row.id}"
            if row.status == store.SUCCEEDED
            else None
        ),
        result_files=list(row.result_files or []),
        seed=hp.get("seed"),
        trained_tokens=row.trained_tokens,
        estimated_finish=(
            int(time.time() + row.eta_seconds)
            if row.status == store.RUNNING and row.eta_seconds is not None
            else None
        ),
        metadata=dict(row.meta or {}),
        method={"type": "supervised", "supervised": {"hyperparameters": openai_hp}},
        user_provided_suffix=row.suffix,
        from_checkpoint=(row.method or {}).get("from_checkpoint"),
        allow_variant_change=bool((row.method or {}).get("allow_variant_change", False)),
        evaluation=evaluation,
    )


def job_evaluation(s: Session, job_id: str) -> dict[str, Any] | None:
    """The comparison of the base model and the adapter on the validation file that the
    worker recorded at the end of the run: the data of the job's newest `evaluation` event
    (also metrics.json's `comparison`), without its message. None before it, or without a
    validation file."""
    events = store.events_of_type(s, job_id, ["evaluation"])
    if not events:
        return None
    return {k: v for k, v in (events[-1].data or {}).items() if k != "message"}


def _gib(value: Any) -> float | None:
    return round(value / GIB, 4) if value is not None else None


def job_memory(
    est: dict[str, Any] | None, placed: dict[str, Any] | None, measured: dict[str, Any] | None
) -> JobMemory:
    """The estimate (always for a CUDA card) and the measurement, each named for what it is."""
    klass = (placed or {}).get("card_class")
    out = None
    if measured and measured.get("device_name"):
        out = MeasuredMemory(
            device=measured["device"],
            device_name=measured["device_name"],
            device_total_gib=_gib(measured.get("device_total_bytes")) or 0.0,
            measures=measured.get("measures"),
            peak_allocated_gib=_gib(measured.get("allocated_bytes")),
            peak_reserved_gib=_gib(measured.get("reserved_bytes")),
            rss_growth_gib=_gib(measured.get("rss_growth_bytes")),
            libraries=measured.get("libraries") or {},
        )
    comparable = out is not None and out.device.startswith("cuda")
    if out is None:
        note = "the run has not started: what it runs on and measures is recorded when it does"
    elif comparable:
        note = (
            "estimate and measurement are the same quantities: peak allocated, and the whole "
            "run's reserved memory against the total the card must have free"
        )
    else:
        note = (
            "the estimate is for a CUDA card; this run was on the CPU, where the measurement is "
            "the process's resident set growth: reported beside the estimate, not compared"
        )
    return JobMemory(
        estimated_for="a CUDA card" + (f", placed on class {klass}" if klass else ""),
        estimated_peak_allocated_gib=est.get("peak_allocated_gib") if est else None,
        estimated_total_gib=est.get("total_gib") if est else None,
        measured=out,
        comparable=comparable,
        note=note,
    )


def _public_placement(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """The placement without the request kept for a re-placement (a whole config.json)."""
    if stored is None:
        return None
    return {k: v for k, v in stored.items() if k != "request"}


def _hyperparameters(row: JobRow) -> dict[str, Any]:
    """What the job asked for until a worker resolves its plan; every value after."""
    if row.plan:
        return {k: row.plan[k] for k in Hyperparameters.model_fields if k in row.plan}
    return dict(row.hyperparameters or {})


# -- step 1: validate ---------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """A request that passed validation: the model as the worker will load it (a hub id, or
    the resolved local directory), its architecture when it can be known offline, and the
    hyperparameters asked for."""

    body: JobCreate
    model: str
    arch: Architecture | None
    model_ref: dict[str, Any]
    hyperparameters: dict[str, Any]
    lr_multiplier: float | None = None

    @property
    def training(self) -> TrainingSettings:
        """The advisor's view of the job's settings, with the plan's defaults for what the
        job leaves unset."""
        defaults = TrainingPlan.model_fields

        def get(key: str) -> Any:
            value = self.hyperparameters.get(key)
            return defaults[key].default if value is None else value

        precision = get("precision")
        return TrainingSettings(
            seq_len=get("seq_len"),
            micro_batch_size=get("micro_batch_size"),
            gradient_accumulation_steps=get("gradient_accumulation_steps"),
            gradient_checkpointing=get("gradient_checkpointing"),
            lora_rank=get("lora_rank"),
            target_modules=get("target_modules"),
            optimizer=get("optimizer") or "adamw",
            precision="bf16" if precision in (None, "auto") else precision,
        )


def _architecture(model: str, resolved: str) -> tuple[Architecture | None, dict[str, Any]]:
    """The architecture when we can know it without a network: a local directory's
    config.json, or the catalog entry of a hub id."""
    if not is_hub_id(resolved):
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


def _plan_problems(body: JobCreate, hp: dict[str, Any]) -> list[Problem]:
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


def source_checkpoint(cid: str) -> tuple[str, int]:
    """(job id, step) of a checkpoint id (`checkpoint_id`)."""
    _, hex_id, step = cid.split("-")
    return f"job-{hex_id}", int(step)


def _source_problems(
    s: Session,
    settings: Settings,
    body: JobCreate,
    owner: str | None,
    model: str,
    hp: dict[str, Any],
) -> list[Problem]:
    """What keeps `from_checkpoint` from being resumed by this job: it is not a complete
    checkpoint of one of the key's jobs, or the adapter it holds has another shape."""
    cid = body.from_checkpoint
    if cid is None:
        return []
    job_id, step = source_checkpoint(cid)
    source = store.get_job(s, job_id, owner)
    if source is None or not jobfiles.is_complete(
        jobfiles.checkpoint_dir(settings.data_dir, job_id, step)
    ):
        return [
            Problem(
                "from_checkpoint",
                "is not a checkpoint of one of your jobs on disk; list them with GET "
                "/v1/fine_tuning/jobs/{id}/checkpoints",
                cid,
            )
        ]
    theirs = {**(source.hyperparameters or {}), **(source.plan or {})}
    defaults = TrainingPlan.model_fields
    mine = {"model": model, "variant": body.variant, "combine_with": list(body.combine_with)}
    was = {
        "model": source.model,
        "variant": source.variant,
        "combine_with": list(source.combine_with or []),
    }
    for key in ("lora_rank", "target_modules"):
        mine[key] = hp.get(key, defaults[key].default)
        was[key] = theirs.get(key, defaults[key].default)
    return [
        Problem(
            key if key in ("model", "variant", "combine_with") else f"hyperparameters.{key}",
            f"must be the checkpoint's ({was[key]!r}) to resume it: from_checkpoint {cid}",
            mine[key],
        )
        for key in mine
        if mine[key] != was[key]
    ]


def validate(s: Session, settings: Settings, body: JobCreate, owner: str | None) -> Submission:
    """Every problem of the request, collected into one `InvalidInput`: unknown files, a
    refused model source, and anything the worker's plan would refuse. Then a hub id is
    checked on the hub (`loracle.hub.HubError`: not found, unreachable, not cached)."""
    problems: list[Problem] = []
    for field in ("training_file", "validation_file"):
        file_id = getattr(body, field)
        if file_id is not None and store.get_file(s, file_id, owner) is None:
            problems.append(
                Problem(field, f"no file {file_id!r}; upload it with POST /v1/files first", file_id)
            )
    resolved = body.model
    roots = settings.allowed_model_roots
    try:
        refuse_tricks(body.model, "model")
        located = locate_model(body.model, roots)
        if not is_hub_id(located):
            check_local_path(located, "model", roots)
        resolved = resolve_model_source(located, roots)
    except InvalidInput as exc:
        problems += exc.problems
    except ModelSourceError as exc:
        problems.append(Problem("model", str(exc), body.model))
    asked, duplicated = knobs.requested(body)
    hp, lr_multiplier, clashes = knobs.translate(body, asked)
    problems += duplicated + clashes
    problems += _plan_problems(body, hp)
    problems += _source_problems(s, settings, body, owner, resolved, hp)
    if problems:
        raise InvalidInput(problems)
    if is_hub_id(resolved):
        # Last, once everything else is right: the one check that may wait on the network
        # (settings.hub_timeout_s at most). Raises HubError, answered by api/errors.py.
        check_hub_model(resolved, settings.hub_timeout_s)
    arch, model_ref = _architecture(body.model, resolved)
    return Submission(body, resolved, arch, model_ref, hp, lr_multiplier)


# -- step 2: choose the variant -----------------------------------------------------------


def _auto_profile(settings: Settings, sub: Submission) -> Profile:
    """The advisor's profile of a job with variant 'auto': the job's card (or the server's
    LORACLE_WORKER_GPU), its model and settings, and its goal."""
    body = sub.body
    if sub.arch is None:
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
    if hardware is not None:
        hardware_dict = hardware.model_dump()
    elif settings.worker_gpu or settings.worker_gpu_memory_gib:
        hardware_dict = {
            "gpu": settings.worker_gpu,
            "gpu_memory_gib": settings.worker_gpu_memory_gib,
        }
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
        return Profile.model_validate(
            {
                "hardware": hardware_dict,
                "model": sub.model_ref,
                "training": sub.training.model_dump(),
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


def choose_variant(
    settings: Settings, sub: Submission
) -> tuple[Combination, Recommendation | None]:
    """The job's combination: as named, or the advisor's decision for 'auto' (refused when
    nothing fits the card, with the remedies)."""
    body = sub.body
    if body.variant != "auto":
        return combination(body.variant, body.combine_with), None
    decision = recommend(_auto_profile(settings, sub))
    if not decision.fits:
        remedies = decision.remedies
        raise InvalidInput(
            [
                Problem(
                    "profile.hardware",
                    f"nothing fits: {decision.label} needs "
                    f"{decision.estimate.total_gib:.1f} GiB on a "
                    f"{decision.hardware.memory_gib:g} GiB card; "
                    + (
                        "try: " + "; ".join(placement.remedy_text(r) for r in remedies[:3])
                        if remedies
                        else (decision.verdict or "choose a smaller model")
                    ),
                )
            ]
        )
    return combination(decision.variant, decision.combine_with), decision


# -- step 3: fill the defaults ------------------------------------------------------------


def fill_defaults(sub: Submission, combo: Combination) -> dict[str, Any]:
    """What the job leaves unset and the advisor has an opinion on, from the advisor: the
    same hyperparameters POST /v1/recommendations answers (the learning rate by model size
    and variant, DoRA without dropout, warmup, schedule). Returns what was filled in;
    ``sub.hyperparameters`` gets it too. Without an architecture only the registry's
    per-variant dropout applies."""
    hp = sub.hyperparameters
    if sub.arch is None:
        # The registry's dropout differs from the plan's default only for DoRA.
        advised = {} if combo.lora_dropout == DEFAULT_LORA_DROPOUT else {"lora_dropout": 0.0}
    else:
        training = sub.training
        suggested = suggest(sub.arch, training, combo, training.precision)
        advised = {
            "learning_rate": suggested["learning_rate"],
            "lora_dropout": suggested["lora_config"]["lora_dropout"],
            "warmup_ratio": suggested["warmup_ratio"],
            "lr_scheduler": suggested["lr_scheduler"],
        }
    if sub.lr_multiplier is not None:
        # OpenAI's learning_rate_multiplier: of the advisor's rate (the plan's default
        # without an architecture).
        base = advised.get("learning_rate", TrainingPlan.model_fields["learning_rate"].default)
        advised["learning_rate"] = round(base * sub.lr_multiplier, 10)
    filled = {k: v for k, v in advised.items() if k not in hp}
    hp.update(filled)
    return filled


def learning_rate_base(sub: Submission, combo: Combination) -> float:
    """What learning_rate_multiplier multiplies for this job: the advisor's suggested rate
    for its model and variant, or the plan's default without an architecture."""
    if sub.arch is None:
        return float(TrainingPlan.model_fields["learning_rate"].default)
    training = sub.training
    return float(suggest(sub.arch, training, combo, training.precision)["learning_rate"])


# -- step 4: place it on a card class -------------------------------------------------------


def place(s: Session, sub: Submission, combo: Combination) -> dict[str, Any]:
    """Where the job goes among the registered workers' card classes (`loracle.placement`):
    a placement with its queue, a waiting one (no worker registered yet, or `placement:
    "wait"`), or a 422 that names the largest card, what the job needs and the remedies."""
    body = sub.body
    gpus = body.resources.gpus
    evaluation = body.validation_file is not None
    stored = placement.request(sub.model_ref, sub.training, combo, gpus, evaluation)
    known = placement.classes(workers.live(s))
    margins = calibration.measured_margins(
        calibration.observations(store.measured_jobs(s, limit=calibration.PLACEMENT_WINDOW))
    )
    result = placement.place(sub.arch, sub.training, combo, gpus, known, evaluation, margins)
    if isinstance(result, placement.Placement):
        return result.as_dict(stored)
    if result.largest is None:
        return placement.waiting(
            "no worker has registered yet; the job is placed when one does", gpus, stored
        )
    if body.placement == "wait":
        return placement.waiting(result.message(), gpus, stored)
    field = "resources.gpus" if result.too_many_cards else "placement"
    raise InvalidInput([Problem(field, result.message(), gpus)])


# -- the whole submission -----------------------------------------------------------------


def create_job(
    s: Session, settings: Settings, body: JobCreate, owner: str | None, job_id: str | None = None
) -> JobRow:
    sub = validate(s, settings, body, owner)
    combo, decision = choose_variant(settings, sub)
    est = None
    if sub.arch is not None:
        dropout = sub.hyperparameters.get("lora_dropout")
        est = estimate(
            sub.arch,
            sub.training,
            combo,
            lora_dropout=dropout,
            evaluation=body.validation_file is not None,
        ).as_dict()
        est["method"] = "analytic"
        est["architecture"] = calibration.architecture_label(sub.arch)
    filled = fill_defaults(sub, combo)
    placed = place(s, sub, combo)
    row = store.add_job(
        s,
        id=job_id or store.new_id("job"),
        owner=owner,
        # What was resolved, not what was typed: the worker loads exactly what was checked
        # (a relative path means nothing to a worker with another working directory).
        model=sub.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        variant=combo.variant,
        combine_with=list(combo.combine_with),
        requested_variant=body.variant,
        hyperparameters=sub.hyperparameters,
        profile=body.profile.model_dump(mode="json") if body.profile else None,
        decision=decision.model_dump(mode="json") if decision else None,
        estimate=est,
        resources=body.resources.model_dump(),
        placement=placed,
        queue=placed["queue"],
        suffix=body.suffix,
        meta=dict(body.metadata or {}),
        method={
            "type": "supervised",
            "learning_rate_base": learning_rate_base(sub, combo),
            "from_checkpoint": body.from_checkpoint,
            # Read by the worker's out-of-memory retries (worker/oom.py) alone.
            "allow_variant_change": body.allow_variant_change,
        },
        # Marked as being sent in the transaction that creates it: the dispatcher sends
        # only jobs without the mark, so it cannot send this one a second time while the
        # request's own send is under way. A failed send clears the mark
        # (`loracle.dispatch.enqueue`); a request that dies before sending leaves it, and
        # the job is found as a lost message (`mark_lost_messages`) and sent again. A job
        # waiting for a fitting worker has no queue yet and is not sent.
        enqueued_at=now() if placed["queue"] else None,
    )
    if placed["waiting"]:
        store.add_event(s, row.id, "placement", f"waiting: {placed['reason']}", placed)
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
            f"advisor chose {decision.label}",
            {
                "variant": combo.variant,
                "combine_with": list(combo.combine_with),
                "path": [step.model_dump(mode="json") for step in decision.decision_path],
            },
        )
    return row


# -- artifacts ----------------------------------------------------------------------------


def artifacts_dir(settings: Settings, job_id: str) -> Path:
    return Path(settings.data_dir) / "jobs" / job_id / "adapter"


def list_artifacts(settings: Settings, job_id: str) -> list[ArtifactOut]:
    folder = artifacts_dir(settings, job_id)
    if not folder.is_dir():
        return []
    return [
        ArtifactOut(name=p.name, bytes=p.stat().st_size)
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.is_symlink()
    ]


def artifact_path(settings: Settings, job_id: str, name: str) -> Path:
    """Only names the listing gives: a name is never joined into a path unchecked."""
    check_plain_name(name, "name")
    for entry in list_artifacts(settings, job_id):
        if entry.name == name:
            return artifacts_dir(settings, job_id) / name
    raise ApiError(
        404,
        "not_found",
        f"job {job_id} has no artifact {name!r}; list them with GET /v1/jobs/{job_id}/artifacts",
    )


# -- checkpoints ------------------------------------------------------------------------------


def checkpoint_id(job_id: str, step: int) -> str:
    return f"ftckpt-{job_id.removeprefix('job-')}-{step}"


def list_checkpoints(s: Session, settings: Settings, row: JobRow) -> list[CheckpointOut]:
    """The job's complete checkpoints still on disk, newest first, each with the training
    loss logged at its step (from the job's events)."""
    events = store.events_of_type(s, row.id, ["checkpoint", "metrics"])
    metrics = [e.data for e in events if e.type == "metrics" and e.data]
    losses = {d.get("step"): d["loss"] for d in metrics if d.get("loss") is not None}
    valid = {d.get("step"): d["valid_loss"] for d in metrics if d.get("valid_loss") is not None}
    saved: dict[int, Any] = {}
    for e in events:
        step = (e.data or {}).get("step")
        if e.type == "checkpoint" and isinstance(step, int):
            saved[step] = e.created_at  # a resumed run saves a step again: the latest counts
    model = f"ft:{row.model}:{row.suffix or 'loracle'}:{row.id}"
    out = []
    for step in sorted(saved, reverse=True):
        if not jobfiles.is_complete(jobfiles.checkpoint_dir(settings.data_dir, row.id, step)):
            continue  # rotated out, or never sealed
        cid = checkpoint_id(row.id, step)
        out.append(
            CheckpointOut(
                id=cid,
                created_at=_ts(saved[step]) or 0,
                fine_tuned_model_checkpoint=f"{model}:ckpt-step-{step}",
                fine_tuning_job_id=row.id,
                step_number=step,
                metrics=CheckpointMetrics(
                    step=step,
                    train_loss=losses.get(step),
                    valid_loss=valid.get(step),
                    full_valid_loss=valid.get(step),
                ),
                download=f"/v1/fine_tuning/jobs/{row.id}/checkpoints/{cid}/content",
            )
        )
    return out


def checkpoint_path(s: Session, settings: Settings, row: JobRow, cid: str) -> Path:
    for c in list_checkpoints(s, settings, row):
        if c.id == cid:
            return jobfiles.checkpoint_dir(settings.data_dir, row.id, c.step_number)
    raise ApiError(
        404,
        "not_found",
        f"job {row.id} has no checkpoint {cid!r} on disk; list them with GET "
        f"/v1/fine_tuning/jobs/{row.id}/checkpoints",
    )


# -- merge ------------------------------------------------------------------------------------

# A merge the worker started and never finished (its process was killed) is taken as lost
# after this long, and a new request is accepted; a real merge of a 70B model on a CPU takes
# minutes, well inside it.
MERGE_LOST_AFTER_S = 3600.0


def merge_out(s: Session, row: JobRow, prefix: str) -> MergeOut | None:
    """The job's newest merge as its events record it, or None when none was asked for."""
    events = store.latest_merge_events(s, row.id)
    if not events:
        return None
    request, last = events[0], events[-1]
    data: dict[str, Any] = {**(request.data or {}), **(last.data or {})}
    status = store.MERGE_STATUS[last.type]
    error = None
    if last.type == store.MERGE_FAILED:
        code = str(data.get("error", "merge_failed"))
        error = ErrorInfo(code=code, type=code, message=str(data.get("message", last.message)))
    done = status in ("succeeded", "failed")
    return MergeOut(
        job_id=row.id,
        status=status,
        into_model_root=(request.data or {}).get("into_model_root"),
        dtype=data.get("dtype"),
        base_weights=data.get("base_weights") if done else None,
        bytes=data.get("bytes") if status == "succeeded" else None,
        files=list(data.get("files") or []) if status == "succeeded" else [],
        model_root_path=data.get("model_root_path"),
        model=data.get("model"),
        download_url=f"{prefix}/{row.id}/merge/content" if status == "succeeded" else None,
        error=error,
        requested_at=int(request.created_at.timestamp()),
        finished_at=int(last.created_at.timestamp()) if done else None,
    )


def request_merge(s: Session, row: JobRow, body: MergeCreate) -> None:
    """Record a merge request (`merge_requested`) for a succeeded job with no merge under way;
    the caller commits and sends the task. 409 otherwise."""
    if row.status != store.SUCCEEDED:
        raise ApiError(
            409,
            "conflict",
            f"job {row.id} is {row.status}: only a succeeded job has an adapter to merge",
        )
    events = store.latest_merge_events(s, row.id)
    if events and events[-1].type in (store.MERGE_REQUESTED, store.MERGE_STARTED):
        age = time.time() - events[-1].created_at.timestamp()
        if age < MERGE_LOST_AFTER_S:
            state = store.MERGE_STATUS[events[-1].type]
            raise ApiError(
                409,
                "conflict",
                f"job {row.id} already has a merge {state}; follow it with GET "
                f"/v1/jobs/{row.id}/merge",
            )
    store.add_event(
        s,
        row.id,
        store.MERGE_REQUESTED,
        "merge requested"
        + (f" into model root {body.into_model_root!r}" if body.into_model_root else ""),
        body.model_dump(mode="json"),
    )


def merge_failed_to_send(s: Session, job_id: str, error: Exception) -> None:
    store.add_event(
        s,
        job_id,
        store.MERGE_FAILED,
        "merge not sent: the broker is unavailable; ask again",
        {"error": "broker_unavailable", "message": str(error)},
        level="error",
    )


def merged_path(s: Session, settings: Settings, row: JobRow) -> Path:
    """The merged model's folder, once the job's newest merge succeeded."""
    events = store.latest_merge_events(s, row.id)
    folder = jobfiles.merged_dir(settings.data_dir, row.id)
    if not events or events[-1].type != store.MERGED or not folder.is_dir():
        raise ApiError(
            404,
            "not_found",
            f"job {row.id} has no merged model; merge it with POST /v1/jobs/{row.id}/merge",
        )
    return folder
