"""Celery tasks of the worker. A task takes a job id and nothing else."""

from __future__ import annotations

from loracle.queue import RUN_JOB, make_celery
from loracle.settings import get_settings

app = make_celery(get_settings())


@app.task(name=RUN_JOB, acks_late=True)
def run_job(job_id: str) -> str:
    from worker.service import execute_job

    return execute_job(job_id, get_settings())


def main(concurrency: int = 1, loglevel: str = "info") -> None:
    """Start a worker on the configured broker (``loracle worker``)."""
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
