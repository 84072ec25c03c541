"""The measured peak memory of a training run: `MemoryMonitor(device).start()` ... `.stop()`.

What the numbers are:

- On CUDA, `torch.cuda.max_memory_allocated` / `max_memory_reserved` since the start of the
  run.
- On CPU, the growth of the process's resident set size (RSS) over its value at the start of
  the run, its peak the kernel's own high-water mark (reset at run start; sampled every 10 ms
  by a thread where the kernel offers none): it includes the model weights, adapters,
  optimizer state, activations and allocator caches.

Beside the peaks, the record names what measured them: the device (`cuda:0` or `cpu`), its
name and total memory, the precision the run used, and the versions of the libraries that
decide what a run holds (torch, transformers, peft, bitsandbytes, accelerate).
"""

from __future__ import annotations

import platform
import threading
from importlib import metadata

from pydantic import BaseModel, Field

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")


def library_versions() -> dict[str, str]:
    """The installed versions of the libraries a run's memory depends on, and Python's."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


class RunDevice(BaseModel):
    """What a run ran on: known when it starts, before anything is measured."""

    device: str = Field(description="'cuda:<index>' or 'cpu'.")
    device_name: str = Field(description="The card's name (torch), or the CPU's model.")
    device_total_bytes: int = Field(description="The card's memory, or the machine's RAM.")
    precision: str | None = Field(default=None, description="What the run computed in.")
    libraries: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def here(cls, device: str, precision: str | None = None) -> RunDevice:
        if device.startswith("cuda"):
            import torch

            index = torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            return cls(
                device=f"cuda:{index}",
                device_name=props.name,
                device_total_bytes=int(props.total_memory),
                precision=precision,
                libraries={**library_versions(), "cuda": str(torch.version.cuda)},
            )
        import psutil

        return cls(
            device="cpu",
            device_name=_cpu_name(),
            device_total_bytes=int(psutil.virtual_memory().total),
            precision=precision,
            libraries=library_versions(),
        )


class PeakMemory(RunDevice):
    """Measured peak memory of the run, in bytes; `measures` says what the numbers mean."""

    measures: str
    allocated_bytes: int | None = None
    reserved_bytes: int | None = None
    rss_baseline_bytes: int | None = None
    rss_peak_bytes: int | None = None
    rss_growth_bytes: int | None = None


class MemoryMonitor:
    """Peak memory between `start()` and `stop()`; see the module docstring for what it is.

    On Linux the CPU peak is the kernel's own high-water mark of the process's RSS (`VmHWM`
    in /proc/self/status), reset at `start()` by writing 5 to /proc/self/clear_refs: exact,
    and no thread. Elsewhere a thread samples the RSS every `interval_s` (it misses spikes
    shorter than that, and each sample briefly takes a core from the training).
    """

    def __init__(self, device: str, interval_s: float = 0.01, precision: str | None = None) -> None:
        self.device = device
        self.precision = precision
        self.run_device: RunDevice | None = None
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kernel_peak = False

    def start(self) -> MemoryMonitor:
        self.run_device = RunDevice.here(self.device, self.precision)
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        self._process = psutil.Process()
        self._kernel_peak = _reset_peak_rss()
        self.baseline = self.peak = self._process.memory_info().rss
        if not self._kernel_peak:
            self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> PeakMemory:
        ran_on = (self.run_device or RunDevice.here(self.device, self.precision)).model_dump()
        if self.device == "cuda":
            import torch

            return PeakMemory(
                **ran_on,
                measures="torch.cuda.max_memory_allocated / max_memory_reserved since run start",
                allocated_bytes=torch.cuda.max_memory_allocated(),
                reserved_bytes=torch.cuda.max_memory_reserved(),
            )
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = _peak_rss() if self._kernel_peak else None
        self.peak = max(self.peak, peak or 0, self._process.memory_info().rss)
        how = (
            "the kernel's high-water mark (VmHWM), reset at run start"
            if peak is not None
            else f"sampled every {self.interval_s * 1000:.0f} ms"
        )
        return PeakMemory(
            **ran_on,
            measures=f"process RSS growth over its value at run start; peak: {how}",
            rss_baseline_bytes=self.baseline,
            rss_peak_bytes=self.peak,
            rss_growth_bytes=self.peak - self.baseline,
        )


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux 4.0+); False where it can't."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _peak_rss() is not None


def _peak_rss() -> int | None:
    """The process's peak RSS in bytes since the last reset (VmHWM), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
