"""The Celery application shared by the API (which only sends) and the worker.

Settings chosen for long GPU jobs, each with the guarantee it buys:
- JSON only (``accept_content=["json"]``): a message can never make a worker
  unpickle attacker-chosen bytes.
  https://docs.celeryq.dev/en/stable/userguide/configuration.html#accept-content
  https://docs.celeryq.dev/en/stable/userguide/security.html#serializers
- ``task_acks_late`` + ``worker_prefetch_multiplier=1``: a job is acknowledged
  when it ends, not when it starts, and a worker holds one job at a time, so a
  worker that dies mid-job does not take queued jobs down with it.
  https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-acks-late
  https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-prefetch-multiplier
  https://docs.celeryq.dev/en/stable/userguide/optimizing.html#prefetch-limits
  https://docs.celeryq.dev/en/stable/faq.html#faq-acks-late-vs-retry
- Tasks carry only a job id; the job store holds everything else.
- No result backend: the job store is where results live.

Broker: Redis when ``LORACLE_BROKER_URL`` is set. Without it the embedded
default is kombu's *filesystem* transport: messages are files under
``$LORACLE_DATA_DIR/broker``. We pick it over kombu's SQLAlchemy transport
because that one would poll the same SQLite file the job store writes to, from
every process, adding lock contention to the store; the filesystem transport
needs nothing but a directory both processes can reach.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache
from pathlib import Path

from celery import Celery

from loracle.settings import Settings

QUEUE = "loracle"
RUN_JOB = "loracle.run_job"
# Merge a succeeded job's adapter into its base (worker.tasks.merge_job). Sent to the job's own
# queue: workers consume only their card class's queues, and a worker of the class that trained
# the job can reach its base model and its files. The merge itself runs on that worker's CPU
# (worker/merge.py says why), one pool process for a few seconds to minutes.
MERGE_JOB = "loracle.merge_job"
# Generate completions from a job's base and from its adapter (worker.tasks.try_job), for a try
# the API stored (loracle.store.tries). Sent to the job's class's inference queue
# (loracle.placement.inference_queue), which only the workers' inference consumers take.
TRY_JOB = "loracle.try_job"


def broker_options(settings: Settings) -> tuple[str, dict[str, object]]:
    if settings.broker_url:
        # Redis redelivers a message nobody acknowledged within the visibility
        # timeout (one hour by default) -- even while its job is still training
        # (celery#5935, celery#3430). We keep the timeout long and make a second
        # delivery harmless instead: the job's lease in the store turns it away.
        # https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
        # https://github.com/celery/celery/issues/5935
        # https://github.com/celery/celery/issues/3430
        timeout = settings.broker_visibility_timeout_s
        return settings.broker_url, {
            "visibility_timeout": timeout,
            # kombu sweeps for expired messages every interval x throttle seconds
            # (100 s by default); keep the sweep well inside a short timeout, so a
            # forced redelivery (the duplicate-delivery test) happens mid-job.
            # See "Transport Options" in
            # https://docs.celeryq.dev/projects/kombu/en/stable/reference/kombu.transport.redis.html
            "unacked_restore_interval": max(1, min(10, int(timeout / 2))),
            "unacked_restore_throttle": 1 if timeout < 600 else 10,
        }
    folder = Path(settings.data_dir) / "broker"
    queue, processed, control = folder / "queue", folder / "processed", folder / "control"
    for path in (queue, processed, control):
        path.mkdir(parents=True, exist_ok=True)
    return "filesystem://", {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "processed_folder": str(processed),
        # exchange bindings; kombu's default is ./control in the working directory
        "control_folder": str(control),
        "store_processed": False,
    }


def make_celery(settings: Settings) -> Celery:
    url, transport_options = broker_options(settings)
    app = Celery("loracle", broker=url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # Publishing gives up after about two seconds when the broker is down: the
        # job is already committed to the store, and the dispatcher sends it later,
        # so POST /v1/jobs answers 201 in seconds instead of hanging (Celery's
        # default policy retries 3 times, up to 1 s apart, per publish).
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-publish-retry-policy
        # https://docs.celeryq.dev/en/stable/userguide/calling.html#message-sending-retry
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        worker_hijack_root_logger=False,
        # Each job in a fresh pool process (forked from the worker, which has torch
        # imported already): a job starts with no CUDA memory, allocator cache or
        # fragmentation left by the one before, and its measured peak (on the CPU, the
        # growth of the resident set) is not understated by memory an earlier job freed
        # but the process kept. The cost is start-up latency on an idle worker: the
        # replacement process must be up first (submit to running p50 0.96 s against
        # 0.39 s, docs/performance.md), nothing beside a fine-tuning job's minutes.
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-max-tasks-per-child
        worker_max_tasks_per_child=1,
        # A worker whose pool process dies (SIGKILL, OOM) acknowledges the message
        # rather than requeueing it: requeueing would loop a job that kills its
        # process every time. The store's lease notices the dead worker and requeues
        # the job a bounded number of times (max_attempts).
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-reject-on-worker-lost
        task_reject_on_worker_lost=False,
        # Losing the broker connection must not stop a job that is training: its
        # state lives in the store, not in the broker. (Celery 5.x warns this
        # default will change; we set it explicitly.)
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-cancel-long-running-tasks-on-connection-loss
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


@lru_cache(maxsize=4)
def celery_for(settings_json: str) -> Celery:
    return make_celery(Settings.model_validate_json(settings_json))


def waiting_job_ids(settings: Settings) -> set[str]:
    """The ids of the jobs whose messages wait in the broker's queues (the default one and
    every card class's, `loracle.<class>.x<cards>`), not yet taken by any worker. Reads the
    queues without consuming them: Redis's lists (kombu keeps one per queue and priority
    step), or the embedded broker's message files. Raises when the broker cannot be read."""
    raw: list[bytes | str] = []
    if settings.broker_url:
        import redis

        client = redis.Redis.from_url(
            settings.broker_url, socket_timeout=5, socket_connect_timeout=5
        )
        try:
            for name in client.scan_iter(match=f"{QUEUE}*", count=1000):
                if client.type(name) in (b"list", "list"):
                    raw += client.lrange(name, 0, -1)
        finally:
            client.close()
    else:
        folder = Path(settings.data_dir) / "broker" / "queue"
        for path in folder.glob(f"*.{QUEUE}*.msg") if folder.is_dir() else ():
            try:
                raw.append(path.read_bytes())
            except FileNotFoundError:  # taken by a worker while we looked
                continue
    return {job_id for message in raw if (job_id := _job_id_of(message))}


def _job_id_of(message: bytes | str) -> str | None:
    """The job id a run_job message carries (kombu's JSON envelope around Celery's
    protocol-2 body of [args, kwargs, embed]), or None for anything else."""
    try:
        envelope = json.loads(message)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None
