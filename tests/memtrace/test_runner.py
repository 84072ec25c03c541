"""`POST /v1/estimates` with method "trace", `loracle estimate --trace`, and the runner behind
them: a subprocess with a time limit, a memory and disk cache, 422s that name the field."""

from __future__ import annotations

import json
import shutil
import sys
import time

import pytest
from typer.testing import CliRunner

from api.advice import service
from cli.main import app as cli
from loracle.settings import get_settings
from memtrace.runner import (
    FINGERPRINTED,
    SOURCE_ROOT,
    TraceFailed,
    TraceRunner,
    cache_key,
    code_fingerprint,
    library_versions,
    request_payload,
)
from tests.utils.api import client_for, settings_for

TINY = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
}
BODY = {
    "model": {"config": TINY},
    "training": {"seq_len": 128, "lora_rank": 8},
    "variant": "qlora",
    "hardware": {"gpu": "t4"},
    "method": "trace",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("trace-data")


@pytest.fixture(scope="module")
def client(data_dir):
    return client_for(settings_for(data_dir))


@pytest.fixture(scope="module")
def traced(client):
    """One real trace through the API (a `python -m memtrace` subprocess)."""
    r = client.post("/v1/estimates", json=BODY)
    assert r.status_code == 200, r.text
    return r.json()


def test_trace_answers_the_estimate_shape(client, traced):
    analytic = client.post("/v1/estimates", json={**BODY, "method": "analytic"}).json()
    assert set(traced) == set(analytic)
    assert traced["method"] == "trace" and analytic["method"] == "analytic"
    assert traced["variant"] == "qlora" and traced["precision"] == "fp16"  # a T4 has no bf16
    assert traced["fits"] is True
    # "fits" asks for the total and the fit margin on it, as the analytic answer does.
    required = traced["total_gib"] * (1 + traced["margin"])
    assert traced["headroom_gib"] == pytest.approx(15.0 - required, abs=0.002)
    assert traced["margin"] == analytic["margin"] and traced["whole_run"]["allocator"] == (
        "expandable_segments"
    )
    assert sum(traced["breakdown"].values()) == pytest.approx(traced["total_gib"], abs=0.01)
    assert traced["trainable_params"] == analytic["trainable_params"]
    assert any("meta device" in note for note in traced["notes"])
    # One row, no mask: flash attention, which keeps no s x s scores.
    assert any("no s x s attention score matrix is held" in n for n in traced["notes"])


def test_an_answer_that_keeps_the_score_matrix_says_so(tmp_path):
    """A padded batch (a mask) with a head dim flash and memory-efficient attention cannot
    take falls back to the math kernel; the answer's notes carry the trace's
    `holds_score_matrix`."""
    odd = {**TINY, "hidden_size": 144, "head_dim": 36}
    body = {**BODY, "model": {"config": odd}, "variant": "lora"}
    body["training"] = {"seq_len": 64, "lora_rank": 8, "micro_batch_size": 2}
    r = client_for(settings_for(tmp_path)).post("/v1/estimates", json=body)
    assert r.status_code == 200, r.text
    note = next(n for n in r.json()["notes"] if "meta device" in n)
    assert "math x" in note and "the s x s attention score matrix is held" in note


def test_a_repeated_trace_is_answered_from_the_caches(client, data_dir, traced):
    runner = service.trace_runner(get_settings_for(data_dir))
    runs = runner.runs
    again = client.post("/v1/estimates", json=BODY)
    assert again.status_code == 200 and again.json() == traced
    assert runner.runs == runs  # memory LRU
    files = list((data_dir / "trace-cache").glob("*.json"))
    assert len(files) == 1
    fresh = TraceRunner(cache_dir=data_dir / "trace-cache")  # an empty memory cache
    payload = json.loads(files[0].read_text())
    assert "estimate" in payload
    assert fresh.run(_payload_of(BODY, precision="fp16")) == payload
    assert fresh.runs == 0  # from disk


def test_cache_key_changes_with_request_and_library_versions():
    payload = request_payload(TINY, {"seq_len": 128}, "lora")
    versions = library_versions()
    key = cache_key(payload, versions)
    assert key == cache_key(request_payload(TINY, {"seq_len": 128}, "lora"), versions)
    assert key != cache_key(request_payload(TINY, {"seq_len": 256}, "lora"), versions)
    assert key != cache_key(request_payload(TINY, {"seq_len": 128}, "dora"), versions)
    assert key != cache_key(payload, {**versions, "peft": "0.0.1"})


def test_cache_key_follows_the_source_of_the_tracer(tmp_path):
    """A tracer change without a TRACER_VERSION bump still misses the old answers: the key
    holds a fingerprint of the source a trace is computed from, comments included."""
    for pattern in FINGERPRINTED:
        for path in SOURCE_ROOT.glob(pattern):
            copy = tmp_path / path.relative_to(SOURCE_ROOT)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
    before = code_fingerprint(tmp_path)
    assert before == code_fingerprint(SOURCE_ROOT)
    payload = request_payload(TINY, {"seq_len": 128}, "lora")
    versions = library_versions()
    for changed in ("memtrace/emulation.py", "loracle/recipe.py", "advisor/memory.py"):
        path = tmp_path / changed
        original = path.read_text()
        path.write_text(original + "# a comment\n")
        after = code_fingerprint(tmp_path)
        assert after != before, changed
        assert cache_key(payload, versions, after) != cache_key(payload, versions, before)
        path.write_text(original)
    # A module the tracer does not build from leaves the key alone.
    (tmp_path / "loracle" / "jsonl.py").write_text("# the upload check\n")
    assert code_fingerprint(tmp_path) == before


def test_a_busy_runner_answers_retry_later_within_its_time_limit():
    runner = TraceRunner(cache_dir=None, timeout_s=0.3)
    assert runner._slots.acquire(timeout=1)  # a trace in progress holds the only slot
    try:
        started = time.perf_counter()
        with pytest.raises(TraceFailed) as caught:
            runner.run(_payload_of(BODY))
        waited = time.perf_counter() - started
    finally:
        runner._slots.release()
    assert 0.3 <= waited < 5
    assert caught.value.field == "method"
    assert "retry later" in caught.value.message and "analytic" in caught.value.message
    assert runner.runs == 0


def test_the_disk_cache_keeps_the_newest_answers(tmp_path):
    runner = TraceRunner(cache_dir=tmp_path, disk_entries=3)

    def store(key):
        runner._store(key, {"estimate": {"key": key}})
        time.sleep(0.05)  # distinct modification times

    for i in range(5):
        store(f"k{i}")
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == ["k2", "k3", "k4"]
    # A hit from disk renews an answer: the oldest unused one goes next.
    assert TraceRunner(cache_dir=tmp_path)._recall("k2") == {"estimate": {"key": "k2"}}
    time.sleep(0.05)
    store("k5")
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == ["k2", "k4", "k5"]


def test_a_refused_trace_is_a_422_naming_the_field_and_is_remembered(data_dir):
    """The worker's refusal (`python -m memtrace` exits 2 naming the field; see
    tests/worker/test_memtrace.py) is cached like an answer and served as a 422."""
    runner = TraceRunner(cache_dir=data_dir / "refusals")
    body = {**BODY, "model": {"config": {**TINY, "model_type": "t5"}}}
    detail = "transformers cannot build 't5' the way the worker loads it; use method 'analytic'"
    runner._store(
        cache_key(_payload_of(body, precision="fp16"), runner.versions),
        {"refused": {"field": "model.config.model_type", "detail": detail}},
    )
    app_client = client_for(settings_for(data_dir / "refused"))
    app_client.app.dependency_overrides[service.get_trace_runner] = lambda: runner
    r = app_client.post("/v1/estimates", json=body)
    assert r.status_code == 422, r.text
    problem = r.json()["problems"][0]
    assert problem["field"] == "model.config.model_type"
    assert "analytic" in problem["message"]
    assert runner.runs == 0


def test_several_cards_are_a_422_before_any_trace(client):
    body = {**BODY, "hardware": {"gpu": "t4", "gpu_count": 2}}
    r = client.post("/v1/estimates", json=body)
    assert r.status_code == 422
    assert r.json()["problems"][0]["field"] == "hardware.gpu_count"


def test_a_trace_past_its_time_limit_is_a_422_not_a_500(data_dir):
    app_client = client_for(settings_for(data_dir / "slow"))
    slow = TraceRunner(cache_dir=None, timeout_s=0.5)
    app_client.app.dependency_overrides[service.get_trace_runner] = lambda: slow
    body = {**BODY, "training": {"seq_len": 256, "lora_rank": 8}}
    r = app_client.post("/v1/estimates", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["problems"][0]["field"] == "method"
    assert "did not finish within 0.5 s" in r.json()["detail"]
    with pytest.raises(TraceFailed):
        slow.run(_payload_of(body))


def test_without_the_worker_libraries_a_trace_is_a_422_that_names_the_fix(data_dir, tmp_path):
    """The core install (the API without the worker extra) has no torch: the runner says so
    before starting a trace. Its Python here is this interpreter with site-packages off
    (`-I -S`), where torch, transformers and peft really cannot be found."""
    bare = tmp_path / "python-without-site-packages"
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')
    bare.chmod(0o755)
    runner = TraceRunner(cache_dir=None, python=str(bare))
    with pytest.raises(TraceFailed) as caught:
        runner.run(_payload_of(BODY))
    assert caught.value.field == "method"
    for text in ("torch", "transformers", "peft", "bitsandbytes", "pip install 'loracle[worker]'"):
        assert text in caught.value.message
    assert runner.runs == 0  # no trace subprocess was started
    app_client = client_for(settings_for(data_dir / "bare"))
    app_client.app.dependency_overrides[service.get_trace_runner] = lambda: runner
    r = app_client.post("/v1/estimates", json=BODY)
    assert r.status_code == 422, r.text
    problem = r.json()["problems"][0]
    assert problem["field"] == "method"
    assert "loracle[worker]" in problem["message"] and "analytic" in problem["message"]
    # With the libraries there (this interpreter as it is), the same check lets it through.
    assert TraceRunner(cache_dir=None)._missing(["torch", "transformers", "peft"]) == []


def test_cli_estimate_trace_prints_the_api_answer(monkeypatch, data_dir, traced, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    monkeypatch.setenv("LORACLE_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    try:
        r = CliRunner().invoke(
            cli,
            [
                "estimate",
                "--model",
                str(config),
                "--variant",
                "qlora",
                "--seq-len",
                "128",
                "--rank",
                "8",
                "--gpu",
                "t4",
                "--trace",
                "--json",
            ],
        )
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 0, r.output
    answer = json.loads(r.output)
    assert answer["method"] == "trace"
    # Same numbers as the API's answer (served from the disk cache the API wrote).
    for key in ("peak_allocated_gib", "total_gib", "breakdown", "peak_phase", "fits"):
        assert answer[key] == traced[key]


def test_cli_estimate_trace_keeps_the_configured_time_limit(monkeypatch, tmp_path):
    """`loracle estimate --trace` stops a trace at LORACLE_TRACE_TIMEOUT_S, as the API does."""
    monkeypatch.setenv("LORACLE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LORACLE_TRACE_TIMEOUT_S", "0.4")
    get_settings.cache_clear()
    try:
        args = ["estimate", "--model", "meta-llama/Llama-3.2-1B", "--seq-len", "512", "--trace"]
        r = CliRunner().invoke(cli, args)
    finally:
        get_settings.cache_clear()
    assert r.exit_code != 0
    assert "did not finish within 0.4 s" in " ".join(r.output.split())


def get_settings_for(data_dir):
    return settings_for(data_dir)


def _payload_of(body, precision="bf16"):
    from advisor.profile import TrainingSettings

    training = TrainingSettings(**{**body["training"], "precision": precision})
    return request_payload(body["model"]["config"], training.model_dump(), body["variant"])
