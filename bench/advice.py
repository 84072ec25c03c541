"""Recommendations per second: in-process, and over HTTP against a bare FastAPI
endpoint returning a body of the same size, on the same server settings, with the
same load generator, in one run. Reported as a ratio (goal: at least 0.8).

    python -m bench advice [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench._common import post_load, uvicorn_server, write_results

PROFILE = {
    "hardware": {"gpu": "rtx-4080"},
    "model": {"name": "meta-llama/Llama-2-7b-hf"},
    "training": {"seq_len": 4096},
    "goal": {"priority": "speed"},
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m bench advice")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server, alternating")
    parser.add_argument(
        "--out", type=Path, default=None, help="write the results here, not bench/results/"
    )
    args = parser.parse_args(argv)

    import tempfile

    from fastapi.testclient import TestClient

    from advisor.decide import recommend
    from advisor.profile import Profile
    from api.main import create_app
    from api.security import digest, new_key
    from loracle.settings import Settings

    # In process, each call is a new profile (its own seq_len): the advisor's own speed,
    # with no cache in front of it.
    profiles = [
        Profile.model_validate({**PROFILE, "training": {"seq_len": 512 + i}}) for i in range(50_000)
    ]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        recommend(profiles[n % len(profiles)])
        n += 1
    in_process = n / (time.perf_counter() - start)

    body = json.dumps(PROFILE).encode()

    # Every cold request is a distinct profile (its own seq_len, and each round its own
    # range of them), so the server's answer cache never hits; the hot run repeats one.
    def cold(round_: int) -> list[bytes]:
        start = 512 + round_ * 100_000
        return [
            json.dumps({**PROFILE, "training": {"seq_len": start + i}}).encode()
            for i in range(100_000)
        ]

    key = new_key()
    data_dir = tempfile.mkdtemp(prefix="loracle-bench-")
    env = {"LORACLE_API_KEY_HASHES": digest(key), "LORACLE_DATA_DIR": data_dir}
    auth = {"Authorization": f"Bearer {key}"}
    settings = Settings(api_key_hashes=digest(key), data_dir=Path(data_dir))
    answer = (
        TestClient(create_app(settings))
        .post(
            "/v1/recommendations",
            content=body,
            headers={"content-type": "application/json", **auth},
        )
        .content
    )
    assert b'"variant"' in answer, answer
    # Both servers run side by side and the load alternates between them, round by
    # round: on a noisy machine a drift in speed then lands on both, not on one.
    hot_runs: list[float] = []
    cold_runs: list[float] = []
    bare_runs: list[float] = []
    bare_env = {"LORACLE_BENCH_BODY": answer.decode()}
    with (
        uvicorn_server("api.main:app", env) as port,
        uvicorn_server("bench.bare_app:app", bare_env) as bare_port,
    ):
        for round_ in range(args.rounds):
            hot_runs.append(
                post_load(port, "/v1/recommendations", [body], args.seconds, headers=auth)
            )
            bare_runs.append(
                post_load(bare_port, "/v1/recommendations", [body], args.seconds, headers=auth)
            )
            cold_runs.append(
                post_load(port, "/v1/recommendations", cold(round_), args.seconds, headers=auth)
            )
    hot, cold_rate, bare = (statistics.median(r) for r in (hot_runs, cold_runs, bare_runs))

    figures = {
        "in_process_per_s": round(in_process, 1),
        "http_repeated_profile_per_s": round(hot, 1),
        "http_distinct_profiles_per_s": round(cold_rate, 1),
        "bare_http_per_s": round(bare, 1),
        "ratio_repeated_to_bare": round(hot / bare, 3),
        "ratio_distinct_to_bare": round(cold_rate / bare, 3),
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
        "goal_ratio": 0.8,
        "response_bytes": len(answer),
    }
    path = write_results("advice", figures, args.out)
    for key, value in figures.items():
        print(f"{key:>22}: {value}")
    print(f"written to {path}")
    return figures


if __name__ == "__main__":
    main()
