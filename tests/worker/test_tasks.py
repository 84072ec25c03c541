"""What `loracle worker` sets up before any job: the CUDA allocator's setting the estimates
model, kept when an operator chose another."""

from __future__ import annotations

import logging
import os

import pytest

from advisor.memory import WORKER_ALLOCATOR_CONF
from worker.tasks import apply_allocator_conf


def test_the_worker_trains_under_the_allocator_setting_the_estimates_model(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    apply_allocator_conf()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == WORKER_ALLOCATOR_CONF


def test_an_operators_own_allocator_setting_is_kept_and_said_to_differ(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    with caplog.at_level(logging.WARNING, logger="loracle.worker"):
        apply_allocator_conf()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"
    assert "the memory estimates assume expandable_segments:True" in caplog.text
