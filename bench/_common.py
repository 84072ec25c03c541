"""Shared helpers of the benchmarks: a small HTTP load generator, a uvicorn
launcher, and the results writer."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_server(app: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """One uvicorn process, one worker, access log off: the same settings for every
    server a benchmark compares."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env={**os.environ, **(env or {})},
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{app} did not start")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _worker(port: int, requests: Iterator[bytes], stop: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop:
            writer.write(next(requests))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            await reader.readexactly(length)
            counts[0] += 1
    finally:
        writer.close()


def post_load(
    port: int,
    path: str,
    bodies: list[bytes],
    seconds: float,
    connections: int = 8,
    headers: dict[str, str] | None = None,
) -> float:
    """Requests per second of keep-alive POSTs from ``connections`` connections,
    cycling through ``bodies``."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]

    async def run() -> float:
        counts = [0]
        cycle = itertools.cycle(requests)
        warm_stop = time.perf_counter() + 0.5
        await asyncio.gather(*(_worker(port, cycle, warm_stop, [0]) for _ in range(connections)))
        start = time.perf_counter()
        await asyncio.gather(
            *(_worker(port, cycle, start + seconds, counts) for _ in range(connections))
        )
        return counts[0] / (time.perf_counter() - start)

    return asyncio.run(run())


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_results(name: str, figures: dict[str, Any], out: Path | None = None) -> Path:
    """`bench/results/<name>.json`, or `<out>/<name>.json` (a smoke run publishes nothing)."""
    folder = out or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **figures}, indent=2) + "\n")
    return path
