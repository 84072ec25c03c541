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
        [sys.executable, "-m", "cli", *command],
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


def test_a_remote_worker_without_its_token_or_with_a_bad_url_is_refused():
    with pytest.raises(ValidationError) as caught:
        Settings(api_url="http://api-host:8000")
    message = " ".join(str(caught.value).split())
    assert "LORACLE_API_URL=http://api-host:8000" in message
    assert "needs LORACLE_WORKER_TOKEN" in message and "loracle keys worker" in message
    shared = {"database_url": "postgresql+psycopg://h/db", "broker_url": "redis://h:6379/0"}
    with pytest.raises(ValidationError, match="must start with http:// or https://"):
        Settings(api_url="api-host:8000", worker_token="lorw_x", **shared)
    with pytest.raises(ValidationError) as caught:
        Settings(api_url="http://h:8000", worker_token="lorw_x", broker_url="redis://h:6379/0")
    message = " ".join(str(caught.value).split())
    assert "LORACLE_DATABASE_URL is not" in message and "LORACLE_BROKER_URL" not in message
    remote = Settings(api_url="https://api-host", worker_token="lorw_x", **shared)
    assert remote.api_url == "https://api-host"


def test_the_api_refuses_a_worker_token_that_is_also_an_api_key_or_not_a_digest():
    from api.security import configuration_problem, digest

    shared = digest("lor_both")
    problem = configuration_problem(
        Settings(api_key_hashes=shared, worker_token_hashes=f"{digest('lorw_w')},{shared}")
    )
    assert problem and "both LORACLE_API_KEY_HASHES and LORACLE_WORKER_TOKEN_HASHES" in problem
    problem = configuration_problem(Settings(api_key_hashes=shared, worker_token_hashes="lorw_w"))
    assert problem and "LORACLE_WORKER_TOKEN_HASHES" in problem and "not SHA-256" in problem
    assert (
        configuration_problem(Settings(api_key_hashes=shared, worker_token_hashes=digest("lorw_w")))
        is None
    )
