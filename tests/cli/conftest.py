"""The command line against a real service: one API and one worker (tests/utils/service.py)
for the tests of this package, started with no network but loopback (tests/utils/offline), and
a `loracle` helper that runs a command in-process as a user's shell would, with LORACLE_URL and
LORACLE_API_KEY set."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from cli.main import app
from tests.utils.api import KEY_A
from tests.utils.service import ROOT, Service

OFFLINE = ROOT / "tests" / "utils" / "offline"

Loracle = Callable[..., Result]


def offline_env(log: Path) -> dict[str, str]:
    """The environment that keeps a child process off the network (and logs any attempt)."""
    return {"PYTHONPATH": f"{OFFLINE}{os.pathsep}{ROOT}", "LORACLE_TEST_OFFLINE": str(log)}


def flat(text: str) -> str:
    """Output with its line wrapping undone: Rich wraps at the terminal's width."""
    return " ".join(text.split())


@pytest.fixture(scope="session")
def offline_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("offline") / "network-attempts.log"


@pytest.fixture(scope="session")
def cli_service(
    tmp_path_factory: pytest.TempPathFactory,
    model_root: Path,
    tiny_model: Path,
    offline_log: Path,
) -> Iterator[Service]:
    service = Service.create(
        tmp_path_factory.mktemp("cli-service"), model_root, **offline_env(offline_log)
    )
    service.start_api()
    service.start_worker("--memory-gib", "24")
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture()
def loracle(cli_service: Service) -> Loracle:
    runner = CliRunner()

    def run(*args: str, key: str | None = KEY_A, url: str | None = None) -> Result:
        env = {"LORACLE_URL": url or cli_service.url, "LORACLE_API_KEY": key}
        return runner.invoke(app, list(args), env=env)  # type: ignore[arg-type]

    return run
