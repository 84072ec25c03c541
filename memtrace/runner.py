"""Run a trace in a subprocess with a time limit, and cache what it answers. No torch here.

The API and the CLI call `TraceRunner.run`; it answers from an in-memory LRU, then from an
on-disk JSON cache, and only then starts `python -m memtrace` (a fresh process: torch,
transformers and peft load in it, never in the caller, and a trace that overruns its time
limit is killed with its process group).

A result is keyed by everything that can change it: the architecture config, the training
settings, the variant combination, the LoRA dropout, the versions of torch, transformers,
peft and bitsandbytes, `TRACER_VERSION` (bumped whenever the tracer's modelling changes) and
a fingerprint of the source files a trace's answer is computed from (`code_fingerprint`), so
a changed tracer never serves an answer of the old one, whether or not the version was
bumped. Cache files are written atomically (a temporary file, then rename), so concurrent
writers and crashes leave either a whole answer or none; the directory keeps the newest
`disk_entries` answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from advisor.answers import EstimateAnswer
    from advisor.profile import EstimateRequest

# Bump when the tracer models anything differently: old cache entries then stop matching.
TRACER_VERSION = 4  # 4: no KV cache in training steps, as the Trainer sets use_cache=False
DEFAULT_TIMEOUT_S = 180.0
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes")
EXIT_REFUSED = 2
# What `python -m memtrace` imports for every request; bitsandbytes only for a QLoRA
# variant or an 8-bit optimizer (the worker imports it lazily).
TRACE_MODULES = ("torch", "transformers", "peft")
# Prints, of the module names it is given, those the interpreter cannot import (without
# importing any: find_spec only locates them, so the probe takes milliseconds, not the
# seconds an `import torch` takes).
_PROBE = (
    "import importlib.util, sys; "
    "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
)


class TraceFailed(Exception):
    """A trace that gave no answer. `field` is the request field to change, `message` says
    what went wrong and what to do."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class TraceRefused(TraceFailed):
    """The worker refused the request (it cannot build or train this model as asked)."""


# The source a trace's answer is computed from, relative to the directory that holds the
# packages: the tracer and its command, the core modules it builds the model and the
# Trainer's arguments from (the plan, the recipe, their errors), and the advisor modules that
# resolve the settings and turn the peak into an estimate (the variant registry, allocator
# slack, CUDA context). A change to any of them, comments included, costs one retrace per
# cached request; missing one would serve stale answers.
FINGERPRINTED = (
    "memtrace/*.py",
    "loracle/errors.py",
    "loracle/plan.py",
    "loracle/recipe.py",
    "advisor/memory.py",
    "advisor/profile.py",
    "advisor/variants.py",
)
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def code_fingerprint(root: Path = SOURCE_ROOT) -> str:
    """SHA-256 over the names and bytes of the `FINGERPRINTED` files under `root`."""
    digest = hashlib.sha256()
    for pattern in FINGERPRINTED:
        paths = sorted(root.glob(pattern))
        if not paths:
            raise FileNotFoundError(f"no {pattern} under {root}: the fingerprint would be blind")
        for path in paths:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@cache
def _installed_fingerprint() -> str:
    return code_fingerprint()


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a trace depends on (read from package metadata,
    without importing them)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def request_payload(
    config: Mapping[str, Any],
    training: Mapping[str, Any],
    variant: str,
    combine_with: list[str] | tuple[str, ...] = (),
    lora_dropout: float | None = None,
) -> dict[str, Any]:
    """What `python -m memtrace` reads on stdin."""
    return {
        "config": dict(config),
        "training": dict(training),
        "variant": variant,
        "combine_with": list(combine_with),
        "lora_dropout": lora_dropout,
    }


def cache_key(
    payload: Mapping[str, Any],
    versions: Mapping[str, str] | None = None,
    code: str | None = None,
) -> str:
    canonical = json.dumps(
        {
            "request": payload,
            "versions": dict(versions or library_versions()),
            "tracer": TRACER_VERSION,
            "code": code or _installed_fingerprint(),
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class TraceRunner:
    """Traces with a time limit, behind a memory LRU and an optional directory of JSON files.

    `concurrency` traces run at once; a caller beyond that waits for a slot (a trace keeps a
    CPU core busy for seconds), at most `timeout_s`, then gets a `TraceFailed` that says to
    retry: the API calls this from its thread pool, and an unbounded wait would hold a
    thread per queued request. The cache directory keeps the newest `disk_entries` answers
    (a few KB each).
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_entries: int = 256,
        concurrency: int = 1,
        python: str | None = None,
        disk_entries: int = 2000,
    ) -> None:
        self.cache_dir = cache_dir
        self.timeout_s = timeout_s
        self.memory_entries = memory_entries
        self.disk_entries = disk_entries
        self.python = python or sys.executable
        self.code = _installed_fingerprint()
        self._memory: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(concurrency)
        self.versions = library_versions()
        self.runs = 0  # subprocesses started (for tests and metrics)
        self._importable: set[str] = set()  # modules the probe found in `self.python`

    # -- cache ----------------------------------------------------------------------------

    def _remember(self, key: str, result: dict[str, Any]) -> None:
        with self._lock:
            self._memory[key] = result
            self._memory.move_to_end(key)
            while len(self._memory) > self.memory_entries:
                self._memory.popitem(last=False)

    def _recall(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                return hit
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.json"
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: the last to be pruned
        self._remember(key, result)
        return result

    def _store(self, key: str, result: dict[str, Any]) -> None:
        self._remember(key, result)
        if self.cache_dir is None:
            return
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(result, f)
            os.replace(tmp, self.cache_dir / f"{key}.json")
        except OSError:
            return  # a cache that cannot be written only costs a retrace
        self._prune()

    def _prune(self) -> None:
        """Keep the newest `disk_entries` answers (by modification time, which a hit
        renews). Runs after each new answer, that is after a trace of seconds: listing
        the directory costs little beside it."""
        assert self.cache_dir is not None
        entries = []
        for path in self.cache_dir.glob("*.json"):
            try:
                entries.append((path.stat().st_mtime_ns, path))
            except OSError:
                continue  # removed meanwhile by another process
        entries.sort(reverse=True)
        for _, path in entries[self.disk_entries :]:
            with contextlib.suppress(OSError):
                path.unlink()

    # -- running --------------------------------------------------------------------------

    def run(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The trace's answer for `payload` (see `request_payload`): the estimate dict
        `python -m memtrace` prints. Raises `TraceFailed`."""
        key = cache_key(payload, self.versions, self.code)
        hit = self._recall(key)
        if hit is None:
            self._check_libraries(payload)
            if not self._slots.acquire(timeout=self.timeout_s):
                raise TraceFailed(
                    "method",
                    f"every trace slot stayed busy for {self.timeout_s:g} s; retry later, "
                    "or use method 'analytic'",
                )
            try:
                hit = self._recall(key)  # another caller may have traced it meanwhile
                if hit is None:
                    try:
                        hit = self._subprocess(payload)
                    except TraceRefused as exc:
                        # A refusal is a property of the request (an unsupported
                        # architecture): remember it too. Timeouts and crashes are not.
                        hit = {"refused": {"field": exc.field, "detail": exc.message}}
                    self._store(key, hit)
            finally:
                self._slots.release()
        if "refused" in hit:
            raise TraceFailed(hit["refused"]["field"], hit["refused"]["detail"])
        return hit

    def _check_libraries(self, payload: Mapping[str, Any]) -> None:
        """Refuse, naming the fix, when the interpreter that would trace lacks the worker's
        libraries (the core install has no torch). Without this check the subprocess would
        start and die on its first import, and the client would read an ImportError."""
        wanted = list(TRACE_MODULES)
        training = payload.get("training") or {}
        variants = {payload.get("variant"), *(payload.get("combine_with") or [])}
        if "qlora" in variants or str(training.get("optimizer", "")).endswith("8bit"):
            wanted.append("bitsandbytes")
        missing = self._missing([m for m in wanted if m not in self._importable])
        if missing:
            raise TraceFailed(
                "method",
                f"method 'trace' runs the worker's training stack, and {', '.join(missing)} "
                f"cannot be imported by {self.python}: install the worker extra "
                "(pip install 'loracle[worker]'), or use method 'analytic'",
            )

    def _missing(self, modules: list[str]) -> list[str]:
        if not modules:
            return []
        if self.python == sys.executable:
            missing = [m for m in modules if importlib.util.find_spec(m) is None]
        else:
            try:
                proc = subprocess.run(
                    [self.python, "-c", _PROBE, *modules],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise TraceFailed(
                    "method",
                    f"the Python that runs traces ({self.python}) cannot be started ({exc}); "
                    "use method 'analytic'",
                ) from None
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
                raise TraceFailed(
                    "method",
                    f"the Python that runs traces ({self.python}) failed ({tail[0][:300]}); "
                    "use method 'analytic'",
                )
            missing = proc.stdout.split()
        # Only what was found is remembered: a library installed later is seen without a
        # restart, and a found one stays found (the probe runs once per module).
        self._importable.update(m for m in modules if m not in missing)
        return missing

    def _subprocess(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        root = Path(__file__).resolve().parents[1]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        self.runs += 1
        proc = subprocess.Popen(
            [self.python, "-W", "ignore", "-m", "memtrace"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=root,
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
        try:
            stdout, stderr = proc.communicate(json.dumps(payload), timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TraceFailed(
                "method",
                f"the trace did not finish within {self.timeout_s:g} s (very large models or "
                "sequences take longer); use method 'analytic', or retry later",
            ) from None
        last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
        try:
            answer = json.loads(last) if last else None
        except json.JSONDecodeError:
            answer = None
        if proc.returncode == 0 and isinstance(answer, dict) and "estimate" in answer:
            return answer
        if proc.returncode == EXIT_REFUSED and isinstance(answer, dict) and "detail" in answer:
            raise TraceRefused(answer.get("field") or "model.config", answer["detail"])
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        raise TraceFailed(
            "method",
            f"the trace failed ({tail[:300]}); use method 'analytic' for this request",
        )


def traced_estimate(request: EstimateRequest, runner: TraceRunner) -> EstimateAnswer:
    """The answer of POST /v1/estimates with method "trace" (the EstimateResponse shape),
    for the API and the CLI. Raises the advisor's `InvalidInput` naming the field to change
    when the request cannot be traced."""
    from advisor.answers import EstimateAnswer
    from advisor.catalog.models import find_model
    from advisor.decide import effective_training, resolve_card, resolve_model
    from advisor.errors import InvalidInput, Problem
    from advisor.memory import card_fit
    from advisor.variants import combination

    problems: list[Problem] = []
    card = None
    try:
        card = resolve_card(request.hardware, required=False) if request.hardware else None
    except InvalidInput as exc:
        problems += exc.problems
    try:
        model_name, arch = resolve_model(request.model)
    except InvalidInput as exc:
        problems += exc.problems
    try:
        combo = combination(request.variant, request.combine_with)
    except InvalidInput as exc:
        problems += exc.problems
    if card is not None and card.count > 1:
        problems.append(
            Problem(
                "hardware.gpu_count",
                "method 'trace' measures one card; set hardware.gpu_count to 1, or use method "
                "'analytic' for a model split over several cards",
                card.count,
            )
        )
    if problems:
        raise InvalidInput(problems)
    training, notes = effective_training(request.training, card)
    config = (
        find_model(request.model.name).config
        if request.model.name is not None
        else request.model.config
    )
    assert config is not None
    # Keys that name or date a checkpoint do not change the model: drop them so the cache
    # serves the same architecture whatever it is called.
    config = {k: v for k, v in config.items() if k not in ("_name_or_path", "transformers_version")}
    payload = request_payload(config, training.model_dump(), combo.variant, combo.combine_with)
    try:
        answer = runner.run(payload)
    except TraceFailed as exc:
        raise InvalidInput([Problem(exc.field, exc.message)]) from None
    out = dict(answer["estimate"])
    if card is not None:
        fits, headroom = card_fit(out["total_gib"], out["margin"], card.memory_gib)
        out["fits"] = fits
        out["headroom_gib"] = round(headroom, 3)
    out["model"] = {"name": model_name, **arch.summary()}
    out["precision"] = training.precision
    trace = answer.get("trace", {})
    kernels = ", ".join(f"{k} x{n}" for k, n in sorted(trace.get("attention_kernels", {}).items()))
    scores = (
        "the s x s attention score matrix is held (a kernel without a fused path ran)"
        if trace.get("holds_score_matrix")
        else "no s x s attention score matrix is held"
    )
    notes.append(
        "measured by tracing two training steps of this architecture on PyTorch's meta device "
        f"(peak in {trace.get('peak_phase', out['peak_phase'])}; attention kernels modelled "
        f"for {trace.get('target', 'cuda')}: {kernels or 'none'}; {scores})"
    )
    out["notes"] = notes
    return EstimateAnswer.model_validate(out)
