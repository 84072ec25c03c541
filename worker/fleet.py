"""This worker in the fleet: its cards, its registration and heartbeat in the store, the
queues it consumes, and the check a job gets on arrival.

At start `register` records the host, the cards (name, total and free memory, compute
capability, bf16), the version and the concurrency; a thread renews the registration every
`LORACLE_HEARTBEAT_S` with the cards' free memory, and a worker whose lease
(`LORACLE_LEASE_TTL_S`) runs out drops out of `GET /v1/workers` and of placement. The queues
are its card class's (`loracle.placement.queues_of`). A CPU worker registers one "card", its
memory budget (`LORACLE_WORKER_MEMORY_GIB`, default the machine's memory), or several
(`LORACLE_WORKER_CPU_CARDS`, `loracle worker --cards`), each with that budget, to take jobs
on several cards as ranks on the CPU: both are for CPU workers and tests, where no card
measures anything.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from typing import Any

import loracle
from loracle import placement
from loracle.settings import Settings
from loracle.store import workers
from loracle.store.db import session

log = logging.getLogger("loracle.worker")
GIB = 2**30


@dataclass(frozen=True)
class Registration:
    worker_id: str
    card_class: str
    cards: list[dict[str, Any]]
    device: str
    queues: list[str]


def gpu_cards(visible: list[str]) -> list[dict[str, Any]]:
    """The visible cards as nvidia-smi reports them (without initialising CUDA, which would
    fix the visible set of this process). Empty on a machine without nvidia-smi."""
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=index,name,memory.total,memory.free,compute_cap",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    cards = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5 or (visible and parts[0] not in visible):
            continue
        index, name, total_mib, free_mib, capability = parts
        major = int(capability.split(".")[0]) if capability[:1].isdigit() else 0
        cards.append(
            {
                "index": index,
                "name": name,
                "total_gib": round(float(total_mib) / 1024, 2),
                "free_gib": round(float(free_mib) / 1024, 2),
                "compute_capability": capability,
                "bf16": major >= 8,  # Ampere and newer
            }
        )
    return cards


def cpu_card(settings: Settings, index: int = 0) -> dict[str, Any]:
    """A CPU worker's "card": its budget, and what of it the machine has free now."""
    import psutil

    memory = psutil.virtual_memory()
    budget = settings.worker_memory_gib or round(memory.total / GIB, 2)
    return {
        "index": "cpu" if index == 0 else f"cpu{index}",
        "name": "cpu",
        "total_gib": budget,
        "free_gib": round(min(budget, memory.available / GIB), 2),
        "compute_capability": None,
        "bf16": True,
    }


def cpu_cards(settings: Settings) -> list[dict[str, Any]]:
    """A CPU worker's cards: `LORACLE_WORKER_CPU_CARDS` of them (default one), each with the
    budget, so that a CPU worker can take `resources.gpus: N` jobs (N ranks on the CPU with
    gloo). For CPU workers and tests."""
    return [cpu_card(settings, i) for i in range(settings.worker_cpu_cards)]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def describe(settings: Settings, visible: list[str], concurrency: int) -> Registration:
    """What this worker registers: its cards, their class and its queues."""
    cards = gpu_cards(visible) if visible else []
    device = "cuda" if cards else "cpu"
    if not cards:
        cards = cpu_cards(settings)
    first = cards[0]
    klass = placement.card_class(first["name"], first["total_gib"], device)
    if device == "cuda":
        _warn_unknown(first)
        if any(placement.card_class(c["name"], c["total_gib"], device) != klass for c in cards):
            log.warning(
                "cards of different kinds are visible (%s); registered as %s: run one worker "
                "per kind of card (CUDA_VISIBLE_DEVICES) to place jobs on each",
                ", ".join(c["name"] for c in cards),
                klass,
            )
    queues = placement.queues_of(klass, len(cards), concurrency)
    return Registration(worker_id(), klass, cards, device, queues)


def _warn_unknown(card: dict[str, Any]) -> None:
    from advisor.catalog.gpus import find_gpu
    from advisor.errors import InvalidInput

    try:
        find_gpu(card["name"])
    except InvalidInput:
        log.warning(
            "card %r is not in loracle's GPU catalog: registered with its measured memory "
            "(%.1f GiB) and bf16 from its compute capability %s",
            card["name"],
            card["total_gib"],
            card["compute_capability"],
        )


def register(settings: Settings, reg: Registration, concurrency: int) -> None:
    with session(settings.resolved_database_url) as s:
        workers.register(
            s,
            reg.worker_id,
            settings.lease_ttl_s,
            host=socket.gethostname(),
            card_class=reg.card_class,
            cards=reg.cards,
            device=reg.device,
            version=loracle.__version__,
            concurrency=concurrency,
            queues=reg.queues,
        )


class Heartbeat:
    """Renews the registration from a thread of the worker's main process until stopped."""

    def __init__(self, settings: Settings, reg: Registration, concurrency: int) -> None:
        self.settings, self.reg, self.concurrency = settings, reg, concurrency
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            try:
                cards = self._cards()
                with session(self.settings.resolved_database_url) as s:
                    alive = workers.heartbeat(
                        s, self.reg.worker_id, self.settings.lease_ttl_s, cards
                    )
                if not alive:  # dropped (a lease that ran out while the store was away)
                    register(self.settings, self.reg, self.concurrency)
            except Exception:  # the store is away: the next beat tries again
                log.exception("worker heartbeat failed")

    def _cards(self) -> list[dict[str, Any]]:
        if self.reg.device == "cpu":
            return cpu_cards(self.settings)
        fresh = gpu_cards([c["index"] for c in self.reg.cards])
        return fresh or self.reg.cards

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            with session(self.settings.resolved_database_url) as s:
                workers.deregister(s, self.reg.worker_id)
        except Exception:  # the lease runs out on its own
            log.exception("worker deregistration failed")


def free_gib_here(settings: Settings) -> float:
    """The memory free now for a job arriving in this pool process: its card's (the one
    CUDA_VISIBLE_DEVICES pins it to), or the CPU budget's share the machine has free."""
    visible = [c for c in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if c.strip()]
    cards = gpu_cards(visible) if visible else []
    if cards:
        return min(float(c["free_gib"]) for c in cards)
    return float(cpu_card(settings)["free_gib"])
