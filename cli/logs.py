"""How the service's processes start: quiet, and logging as text or one JSON object a line.

`quiet_third_parties` runs first in ``loracle serve``, ``worker`` and ``up`` (the processes
of the service; the worker's pool processes are forked from it and inherit it). Each filter
below is a message the libraries print on every start or every job that says nothing a
loracle user can act on; each is matched narrowly, so the same library's other warnings
still show.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import typer

LogFormat = Literal["text", "json"]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        help="text, or json: one JSON object per log line (time, level, logger, process, message)",
    ),
]


class _Drop(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(str(record.msg))


# logger name -> the message dropped from it
DROPPED_LOGS = {
    # bitsandbytes, on a CPU with AVX512-BF16, at import: it looks for the optional `kernels`
    # package (a hub download) for a faster 4-bit CPU matmul, and says "No module named
    # 'kernels'" when it is absent; it falls back to its own kernel, which the worker uses.
    "bitsandbytes.backends.cpu.ops": r"^Failed to load CPU gemm_4bit_forward from kernels",
    # kombu, with the embedded broker (a filesystem transport has no host), on every start.
    "kombu.connection": r"^No hostname was supplied",
    # Celery's own "celery@host ready."; the worker logs a line that says what it serves.
    "celery.apps.worker": r"^%s ready\.$",
}

# (category, message regex) of Python warnings ignored.
IGNORED_WARNINGS = [
    # transformers 5, on every job: the worker's TrainingArguments and peft's
    # prepare_model_for_kbit_training use the gradient_checkpointing names, which still
    # work until v6 (renamed activation_checkpointing).
    (FutureWarning, r"`(is_)?gradient_checkpointing(_kwargs|_enable|_disable)?` is deprecated"),
]


def quiet_third_parties() -> None:
    """Filter the known third-party start-up and per-job noise, in this process and the
    processes it forks; call before the libraries are imported."""
    for category, message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, pattern in DROPPED_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(pattern))
    # transformers' and huggingface_hub's progress bars ("Loading weights", downloads): in a
    # worker's log each refresh is a line of its own, and the job's events already report
    # its progress. Read when huggingface_hub is imported, hence before it is; a value the
    # user set is kept.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, process (name and
    pid: the API, the worker and its pool processes share a log), message, and the
    exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def uvicorn_log_config(log_format: str) -> dict[str, Any] | None:
    """uvicorn's ``log_config``: None keeps its text default; json sends uvicorn's loggers
    and every other (the API's own, captured warnings) through one JSON handler."""
    if log_format != "json":
        return None
    logging.captureWarnings(True)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": "INFO"},
        "loggers": {
            name: {"handlers": [], "level": "INFO", "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def json_celery_logging() -> None:
    """Celery's worker logs as JSON: its own set-up (level, stdout redirection, the pool's
    processes) is kept and only the formatter of its handlers is replaced. Warnings reach
    the log as records (Celery captures them)."""
    import sys

    from celery.signals import after_setup_logger, after_setup_task_logger

    # Until Celery sets up its logging, as JSON too: a warning it gives while the worker is
    # made (running as root, say) comes before that.
    early = logging.StreamHandler(sys.__stderr__)
    early.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[early])
    logging.captureWarnings(True)

    def use_json(logger: logging.Logger, **_: Any) -> None:
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())

    # weak=False: the receivers are local functions, which a weak reference would lose
    after_setup_logger.connect(use_json, weak=False)
    after_setup_task_logger.connect(use_json, weak=False)
