"""The evidence benchmark's base model: the same spec and seed give the same weights."""

from __future__ import annotations

import pytest

from bench.evidence.base import BaseSpec, build_base


@pytest.mark.slow
def test_base_model_is_rebuilt_identically(tmp_path, monkeypatch):
    # A toy spec (seconds to build): the check is that the same spec and seed give the same
    # weights in a fresh cache, and that a second call finds them cached.
    spec = BaseSpec(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        seq_len=64,
        batch_size=8,
        steps=8,
        warmup_steps=1,
        corpus_files=25,
    )
    records = []
    for name in ("a", "b"):
        monkeypatch.setenv("LORACLE_BENCH_CACHE", str(tmp_path / name))
        path, record = build_base(spec, log=lambda _: None)
        assert record["cached"] is False and path.parent == tmp_path / name
        records.append(record)
    assert records[0]["weights_sha256"] == records[1]["weights_sha256"]
    again, cached = build_base(spec, log=lambda _: None)
    assert cached["cached"] is True and again == path
