"""The dispatcher: hands committed jobs to the broker, and finds the ones whose message was
lost. The job store is the source of truth; the broker only carries "job X is ready".

`enqueue` sends a job the API just committed. `dispatch_pending`, run every few seconds by
the API (and by anything else that wants to), reaps jobs whose worker stopped heart-beating,
notices a Redis broker that lost its data, marks queued jobs whose message no broker holds
any more, and sends every queued job that is not marked as sent. Every statement it needs is
a function of `loracle.store.jobs`.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery

from loracle import calibration, placement
from loracle.queue import RUN_JOB, waiting_job_ids
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store import workers
from loracle.store.db import session
from loracle.store.models import now

log = logging.getLogger("loracle.dispatch")


def enqueue(settings: Settings, queue: Celery, job_id: str) -> bool:
    """Hand a committed job to the broker. False when the broker is unreachable:
    the job stays queued in the store and the dispatcher sends it later."""
    with session(settings.resolved_database_url) as s:
        target = store.job_queue(s, job_id)
    if target is None:  # waiting for a fitting worker: `place_waiting` gives it a queue
        return True
    try:
        queue.send_task(RUN_JOB, args=[job_id], queue=target)
    except Exception as exc:  # any broker failure: the store keeps the job
        log.warning("broker unavailable for %s: %s", job_id, exc)
        with session(settings.resolved_database_url) as s:
            # Unmarked: the dispatcher sends it once the broker is back.
            store.unmark_sent(s, job_id)
            if not store.has_event(s, job_id, "broker_unavailable"):  # once per job
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
        store.mark_sent(s, job_id)
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
        stale = store.queued_sent_before(s, cutoff)
    if not stale:
        return []
    waiting = waiting_job_ids(settings)
    lost = []
    with session(url) as s:
        for job_id in stale:
            if job_id in waiting:
                continue
            if store.unmark_sent(s, job_id, sent_before=cutoff):
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


def place_waiting(settings: Settings) -> list[str]:
    """Give a queue to the queued jobs that wait for a fitting worker, now that one may have
    registered; returns their ids. Jobs stored before placement existed go to the largest
    registered class."""
    url = settings.resolved_database_url
    with session(url) as s:
        pending = store.waiting_for_placement(s)
        if not pending:
            return []
        known = placement.classes(workers.live(s))
        margins = calibration.measured_margins(
            calibration.observations(store.measured_jobs(s, limit=calibration.PLACEMENT_WINDOW))
        )
    placed = []
    for job_id, stored in pending:
        if not known:
            break
        if stored and stored.get("request"):
            result = placement.place_request(stored["request"], known, margins)
        else:
            result = placement.largest(
                known, "placed by the dispatcher: the job was stored before placement existed"
            )
        if not isinstance(result, placement.Placement):
            continue
        record = result.as_dict((stored or {}).get("request"))
        with session(url) as s:
            if store.set_placement(s, job_id, record):
                store.add_event(
                    s,
                    job_id,
                    "placement",
                    f"placed on {result.card_class}: {result.reason}",
                    record,
                )
                placed.append(job_id)
    return placed


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
                store.unmark_all_sent(s)
        for job_id in mark_lost_messages(settings):
            log.warning("job %s: its message was lost; sending it again", job_id)
        for job_id in place_waiting(settings):
            log.info("job %s: a fitting worker registered; placed", job_id)
    except Exception as exc:  # broker down: the sends below fail and are retried later
        log.warning("broker check failed: %s", exc)
    with session(settings.resolved_database_url) as s:
        ids = store.unsent_queued(s, limit=100)
    sent = 0
    for job_id in ids:
        if not enqueue(settings, queue, job_id):
            # The broker is down: every further publish would wait its ~2 s retry too, and
            # a round of 100 would hold back the next reap of dead workers' jobs by minutes.
            # The rest wait for the next round.
            break
        sent += 1
    return sent
