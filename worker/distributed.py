"""Jobs on several cards: one process per card, started by torchrun, trained by the Trainer.

A job placed with `resources.gpus: N > 1` (its placement names N and the strategy the
advisor's estimate chose: `ddp` when one card holds the whole run, else `fsdp`; see
docs/memory.md) runs as N processes of `python -m worker train`, started by PyTorch's
standard launcher:

    python -m torch.distributed.run --standalone --nproc_per_node N \\
        -m worker train --plan plan.json --result result.json [--job ID --lease-token T]

Each process is one rank; the Trainer does DDP or FSDP (its `TrainingArguments`, from
`trainer_arguments`), this module only decides who talks to the job store and how the ranks
agree to stop:

- The job store is written by rank 0 alone: its hooks (`worker.service.StoreHooks` under the
  worker, JSON lines on stderr from the command line) report events and progress, renew the
  lease and read cancels; the other ranks report nothing (`RankHooks`).
- A cancel seen by rank 0 stops every rank at the same optimizer step: at each step's end
  the ranks all-reduce a stop flag (one int over the gloo group: a few tens of microseconds
  on one machine, next to a step's gradient all-reduce). Micro-batch ends are not asked:
  a stop decided there by one rank alone would leave the others waiting in the next
  collective.
- Rank 0 writes the one adapter (`is_writer`); under FSDP every rank first joins the gather
  of the full adapter state (`full_adapter_state`).
- A rank that dies ends the job, with no hang: torchrun (`--max_restarts 0`) stops the
  other ranks as soon as one exits with an error, and every collective has a timeout
  (`LORACLE_COLLECTIVE_TIMEOUT_S`) for a rank that hangs without exiting. The job fails
  with the launcher's summary (which rank, which exit code or signal); its checkpoints stay
  on disk, and a run of the same plan resumes from the newest (tests/worker/test_distributed.py).

On the CPU (workers registered with `LORACLE_WORKER_CPU_CARDS` / `loracle worker --cards`,
and the tests) the backend is gloo and the N processes share the machine's cores, always
with DDP: accelerate runs FSDP on accelerators only. On CUDA it is NCCL, and rank r trains
on card r of CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from loracle.plan import Strategy, TrainingPlan
from loracle.settings import Settings, get_settings
from worker import faults
from worker.errors import LeaseLost, WorkerError
from worker.training import TrainingHooks, TrainingResult, run_training

log = logging.getLogger("loracle.worker")

RUN_DIRNAME = "distributed"  # under the job's output_dir: plan, result and the launcher's log
# How much of the launcher's log a failed job's error message carries: torchrun ends it with
# a summary naming the rank that failed first and how (exit code or signal).
LOG_TAIL_LINES = 25


class DistributedRunFailed(WorkerError):
    """The ranks of a job on several cards did not finish: one crashed, was killed, or a
    collective timed out. The message carries the launcher's summary."""


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    env = os.environ
    return (
        int(env.get("RANK", "0")),
        int(env.get("WORLD_SIZE", "1")),
        int(env.get("LOCAL_RANK", "0")),
    )


def in_distributed_launch() -> bool:
    return world()[1] > 1


# ---------------------------------------------------------------------------------------------
# The parent: the worker's pool process starts the launcher and waits for it
# ---------------------------------------------------------------------------------------------


def job_cards(job: Any) -> tuple[int, Strategy]:
    """How many cards a stored job was placed on, and the strategy its placement chose."""
    placed = job.placement or {}
    gpus = int(placed.get("gpus") or (job.resources or {}).get("gpus") or 1)
    strategy: Strategy = "fsdp" if placed.get("strategy") == "fsdp" else "ddp"
    return gpus, strategy


def run_job_training(
    plan: TrainingPlan, hooks: TrainingHooks, job: Any, token: int, settings: Settings
) -> TrainingResult:
    """Train a stored job: in this process on one card, or as `gpus` ranks under torchrun."""
    gpus, strategy = job_cards(job)
    if gpus <= 1:
        _one_card_of_several()
        from worker import oom

        # Out of memory on one card is tried again with the advisor's next remedy that keeps
        # the batch, from the newest checkpoint (worker/oom.py). Not on several cards (below):
        # a rank out of memory exits, torchrun stops the others and the job fails with the
        # launcher's summary; a retry there would relaunch every rank, not done yet.
        return oom.train_one_card(
            plan,
            hooks,
            retries=settings.oom_retries,
            variant_change_allowed=oom.variant_change_allowed(job),
            record_plan=oom.store_plan(settings, job.id, token),
        )
    from worker import shutdown

    def shutting_down() -> bool:
        if shutdown.requested() is None:
            return False
        # The hooks note the shutdown, so that the job is requeued (worker/shutdown.py)
        # rather than failed when the launch ends below.
        hooks.should_stop(step_end=True)
        return True

    return launch(
        plan.model_copy(update={"strategy": strategy}),
        gpus,
        job_id=job.id,
        token=token,
        lost=getattr(hooks, "lost", None),
        stop_now=shutting_down,
    )


def _one_card_of_several() -> None:
    """A one-card job on a worker that runs one job at a time on several cards (nothing
    pinned its pool process, `worker.tasks._pin_one_gpu`) takes the first card: with more
    visible, the Trainer would wrap the model in DataParallel. CUDA is not initialised yet
    in this process, so the variable still decides what it sees."""
    cards = [c for c in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if c.strip()]
    if len(cards) > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = cards[0]


def launch_command(plan_path: Path, result_path: Path, gpus: int, *extra: str) -> list[str]:
    """torchrun's command line for one job. `--standalone`: a rendezvous on a free local
    port, so several workers on one machine never collide; `--max_restarts 0`: a failed rank
    fails the launch (the job's own attempts and checkpoints do the retrying)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "--max_restarts=0",
        "--monitor_interval=0.5",
        "-m",
        "worker",
        "train",
        "--plan",
        str(plan_path),
        "--result",
        str(result_path),
        *extra,
    ]


def launch_env(gpus: int, settings: Settings) -> dict[str, str]:
    """The launcher's environment: the first `gpus` visible cards; on the CPU each rank gets
    its share of the cores (torchrun's own default would be one thread each)."""
    env = dict(os.environ)
    cards = [c for c in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if c.strip()]
    if cards:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(cards[:gpus])
    elif "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // gpus))
    env["LORACLE_COLLECTIVE_TIMEOUT_S"] = str(settings.collective_timeout_s)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _die_with_parent() -> Any:
    """A function for Popen's preexec_fn: the launcher gets SIGTERM when the thread that
    started it dies (a pool process killed mid-job), and torchrun then stops its ranks, so
    no orphan keeps training the job. libc is resolved here, in the parent: between fork and
    exec the child (of a process with threads) only makes the one system call."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the launcher outlives a killed parent
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def launch(
    plan: TrainingPlan,
    gpus: int,
    *,
    job_id: str | None = None,
    token: int | None = None,
    lost: Any = None,
    settings: Settings | None = None,
    resume: bool = True,
    stop_now: Callable[[], bool] | None = None,
) -> TrainingResult:
    """Run `plan` as `gpus` ranks under torchrun and return rank 0's result.

    With `job_id` and `token` rank 0 writes to the job store itself (events, progress,
    lease, cancels); `lost` (the caller's lease-lost event) stops the launch early,
    and so does `stop_now()` (the worker shutting down: the ranks are stopped at once, with no
    checkpoint of their step, and the requeued job resumes from its newest periodic one).
    Raises `LeaseLost` when rank 0 lost the job's lease, `DistributedRunFailed` for any other end
    than a result."""
    settings = settings or get_settings()
    run_dir = plan.output_dir / RUN_DIRNAME
    run_dir.mkdir(parents=True, exist_ok=True)
    plan_path, result_path, log_path = (
        run_dir / "plan.json",
        run_dir / "result.json",
        run_dir / "torchrun.log",
    )
    plan_path.write_text(plan.model_dump_json(indent=2))
    result_path.unlink(missing_ok=True)
    extra = ["--job", job_id, "--lease-token", str(token)] if job_id and token is not None else []
    if not resume:
        extra.append("--no-resume")
    command = launch_command(plan_path, result_path, gpus, *extra)
    log.info("job %s: %s", job_id or plan.output_dir, " ".join(command))
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            command,
            env=launch_env(gpus, settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent(),
        )
        while proc.poll() is None:
            if lost is not None and lost.is_set():
                # Another process owns the job now: stop writing to its run at once.
                proc.terminate()
                proc.wait()
                raise LeaseLost(f"job {job_id}: lease lost; its ranks were stopped")
            if stop_now is not None and stop_now():
                proc.terminate()  # torchrun passes it on to the ranks
                proc.wait()
                raise DistributedRunFailed(
                    f"the job's {gpus} ranks were stopped for the worker's shutdown; ranks "
                    "under torchrun write no checkpoint of their step"
                )
            time.sleep(0.2)
    return _outcome(proc.returncode, result_path, log_path, gpus)


def _outcome(code: int, result_path: Path, log_path: Path, gpus: int) -> TrainingResult:
    answer = json.loads(result_path.read_text()) if result_path.exists() else None
    if answer is not None and "error" not in answer and code == 0:
        return TrainingResult.model_validate(answer)
    if answer is not None and answer.get("error") == "LeaseLost":
        raise LeaseLost(str(answer.get("detail")))
    why = (
        f"rank 0: {answer['error']}: {answer.get('detail')}"
        if answer and "error" in answer
        else f"the launcher exited with {code}"
    )
    tail = "\n".join(deque(log_path.read_text(errors="replace").splitlines(), LOG_TAIL_LINES))
    raise DistributedRunFailed(
        f"the job's {gpus} ranks did not finish ({why}); the launcher's log ({log_path}) "
        f"ends:\n{tail}"
    )


# ---------------------------------------------------------------------------------------------
# One rank: `python -m worker train` under torchrun
# ---------------------------------------------------------------------------------------------


class RankHooks(TrainingHooks):
    """The hooks of one rank: rank 0 forwards to the caller's hooks, the others say nothing,
    and every rank takes the stop decision together (see the module docstring)."""

    def __init__(self, inner: TrainingHooks, rank: int) -> None:
        self.inner = inner if rank == 0 else TrainingHooks()
        self.rank = rank
        self.stopped = False

    def on_event(self, type: str, data: dict[str, Any]) -> None:
        if self.rank == 0:
            self.inner.on_event(type, data)

    def on_progress(self, step, total_steps, loss, learning_rate, tokens_per_second, eta_seconds):
        faults.rank_step(self.rank, step)
        if self.rank == 0:
            self.inner.on_progress(
                step, total_steps, loss, learning_rate, tokens_per_second, eta_seconds
            )

    def should_stop(self, step_end: bool = False) -> bool:
        if self.stopped:
            return True
        if not step_end:
            return False
        import torch
        import torch.distributed as dist

        local = self.rank == 0 and self.inner.should_stop(step_end=True)
        flag = torch.tensor([int(local)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_control_group())
        self.stopped = bool(flag.item())
        return self.stopped

    def owns_run(self) -> bool:
        # Only rank 0 writes what matters (checkpoint seals, the adapter); a lost lease
        # there raises LeaseLost, rank 0 exits with an error and torchrun stops the others.
        return self.inner.owns_run() if self.rank == 0 else True


_CONTROL: list[Any] = []


def _control_group() -> Any:
    """The process group the stop flag travels on: a gloo group beside NCCL's (a CPU int,
    no device synchronisation), the default group when that is gloo already."""
    return _CONTROL[0] if _CONTROL else None


def init_process_group(device: str, local_rank: int, timeout_s: float) -> None:
    """Join the job's process group before the model loads (transformers loads FSDP ranks
    other than 0 on the meta device only once it is up), with the collective timeout."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    timeout = timedelta(seconds=timeout_s)
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", timeout=timeout)
        _CONTROL.append(dist.new_group(backend="gloo", timeout=timeout))
    else:
        dist.init_process_group("gloo", timeout=timeout)


def collective_timeout_s() -> float:
    """The launcher passes its settings' timeout down (`launch_env`)."""
    return float(get_settings().collective_timeout_s)


def trainer_arguments(plan: TrainingPlan, device: str) -> dict[str, Any]:
    """The `TrainingArguments` of a run on several processes (none for one process)."""
    if plan.strategy is None or not in_distributed_launch():
        return {}
    args: dict[str, Any] = {
        "ddp_backend": "nccl" if device == "cuda" else "gloo",
        "ddp_timeout": int(collective_timeout_s()),
        # Every adapter takes part in every step: no search for unused ones (a graph walk
        # per step that DDP would otherwise do).
        "ddp_find_unused_parameters": False,
    }
    if plan.strategy == "fsdp":
        # FSDP2 (transformers' default), each decoder block a unit, gathered in forward and
        # again in backward. transformers wraps peft's LoRA layers as units of their own and,
        # for 4-bit, sets FSDP's mixed precision to the quant storage dtype
        # (update_fsdp_plugin_peft). The full state is gathered for checkpoints and adapter:
        # they stay loadable by one process.
        args["fsdp"] = True
        args["fsdp_config"] = {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "reshard_after_forward": True,
            "cpu_ram_efficient_loading": True,
            "state_dict_type": "FULL_STATE_DICT",
            "activation_checkpointing": plan.gradient_checkpointing,
        }
        if plan.gradient_checkpointing:
            args["gradient_checkpointing"] = False  # FSDP checkpoints its own units instead
    return args


def full_adapter_state(trainer: Any) -> dict[str, Any] | None:
    """Under FSDP, the full (unsharded) state to save the adapter from: a gather every rank
    must join, answered on rank 0. None otherwise (the model's own weights are whole)."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return None
    return trainer.accelerator.get_state_dict(trainer.model)  # type: ignore[no-any-return]


def is_writer(trainer: Any) -> bool:
    """Whether this process writes the run's adapter: rank 0, or the only process."""
    return bool(trainer.is_world_process_zero())


def run_rank(plan: TrainingPlan, hooks: TrainingHooks, resume: bool = True) -> TrainingResult:
    """This rank's part of a run under torchrun: join the group, train, and say on stderr
    where this rank stopped and whether it wrote the adapter (one JSON line:
    `{"rank": r, "status": ..., "steps": s, "adapter": bool}`)."""
    from worker.modeling import detect_device

    rank, _, local_rank = world()
    if plan.strategy is None:
        plan = plan.model_copy(update={"strategy": "ddp"})
    if plan.strategy == "fsdp":
        # transformers then loads the weights on rank 0 only, the others on the meta device.
        os.environ.setdefault("ACCELERATE_USE_FSDP", "true")
        os.environ.setdefault("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    device = detect_device()
    ranked = RankHooks(hooks, rank)
    if device == "cpu" and plan.strategy == "fsdp":
        # accelerate shards with FSDP on accelerators only (its CPU runs are plain DDP), and
        # on the CPU every rank takes from the one memory anyway: nothing to gain by sharding.
        plan = plan.model_copy(update={"strategy": "ddp"})
        ranked.on_event(
            "warning",
            {
                "message": "strategy: FSDP was chosen for cards; on the CPU accelerate runs "
                "no FSDP, so the ranks run DDP, each holding the whole model in the "
                "machine's one memory"
            },
        )
    init_process_group(device, local_rank, collective_timeout_s())
    result = run_training(plan, ranked, resume=resume)
    _leave_together()
    wrote = "adapter_dir" in result.artifacts or bool(result.kept)  # finished, or cancelled
    print(
        json.dumps(
            {"rank": rank, "status": result.status, "steps": result.steps, "adapter": wrote}
        ),
        file=sys.stderr,
        flush=True,
    )
    return result


def _leave_together() -> None:
    """Every rank waits here for the others once its run has ended normally, before any
    leaves the group: rank 0 writes the adapter (or what a cancel keeps) while the others
    have nothing left to do, and a rank that tore its gloo connections down and exited in
    the middle of that was seen to abort (SIGABRT) on a fast machine, failing a cancelled
    job. Not on an error's way out: the others may be inside another collective, and
    torchrun stops them anyway."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier(group=_control_group())


def end_rank() -> None:
    """Leave the process group (a clean exit; torchrun warns about ranks that do not)."""
    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
