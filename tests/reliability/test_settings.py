"""Settings that would break the delivery guarantee are refused at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from loracle.settings import Settings
from tests.utils.service import ROOT


@pytest.mark.parametrize(("heartbeat", "ttl"), [(10, 5), (4, 4)])
def test_a_heartbeat_not_shorter_than_the_lease_is_refused(heartbeat: float, ttl: float):
    with pytest.raises(ValidationError) as caught:
        Settings(heartbeat_s=heartbeat, lease_ttl_s=ttl)
    message = str(caught.value)
    assert f"LORACLE_HEARTBEAT_S={heartbeat:g}" in message
    assert f"LORACLE_LEASE_TTL_S={ttl:g}" in message
    assert "must be shorter" in message


def test_a_heartbeat_inside_the_lease_is_accepted():
    settings = Settings(heartbeat_s=1, lease_ttl_s=4)
    assert (settings.heartbeat_s, settings.lease_ttl_s) == (1, 4)
    defaults = Settings()
    assert defaults.heartbeat_s < defaults.lease_ttl_s


@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["worker"]])
def test_the_api_and_the_worker_refuse_to_start_with_it(tmp_path: Path, command: list[str]):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORACLE_")}
    env.update(
        LORACLE_DATA_DIR=str(tmp_path),
        LORACLE_AUTH_DISABLED="1",
        LORACLE_HEARTBEAT_S="30",
        LORACLE_LEASE_TTL_S="20",
    )
    refused = subprocess.run(
        [sys.executable, "-m", "loracle.cli", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    said = " ".join(refused.stderr.split())  # the terminal wraps long lines
    assert "LORACLE_HEARTBEAT_S=30 must be shorter than LORACLE_LEASE_TTL_S=20" in said
    assert not (tmp_path / "broker").exists(), "refused before anything was set up"
