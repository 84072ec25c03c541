"""docker-compose.yml cannot run here (no Docker engine): check it is right by construction."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import yaml

from api.security import configuration_problem, digest
from loracle.cli import app
from loracle.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_services_and_health_ordering():
    services = COMPOSE["services"]
    assert set(services) == {"redis", "api", "worker"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    assert services["api"]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert services["worker"]["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert services["worker"]["depends_on"]["api"] == {"condition": "service_healthy"}


def test_worker_reserves_a_gpu():
    devices = COMPOSE["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_api_and_worker_share_data_and_broker():
    api, worker = COMPOSE["services"]["api"], COMPOSE["services"]["worker"]
    assert api["volumes"] == worker["volumes"] == ["loracle-data:/data"]
    assert "loracle-data" in COMPOSE["volumes"]
    for service in (api, worker):
        env = service["environment"]
        assert env["LORACLE_BROKER_URL"].startswith("redis://redis:6379")
        assert env["LORACLE_DATA_DIR"] == "/data"
        # Hub downloads land on the shared volume, so they survive a rebuild.
        assert env["HF_HOME"].startswith("/data/")


def test_images_and_commands_exist():
    targets = set(re.findall(r"^FROM \S+ AS (\w+)$", DOCKERFILE, flags=re.M))
    commands = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    for name in ("api", "worker"):
        service = COMPOSE["services"][name]
        assert service["build"]["target"] in targets
    assert COMPOSE["services"]["worker"]["command"][:2] == ["loracle", "worker"]
    assert {"serve", "worker"} <= commands
    assert 'CMD ["loracle", "serve"' in DOCKERFILE


def _interpolate(value: str, host_env: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error} against a host environment."""

    def one(m: re.Match[str]) -> str:
        name, op, rest = m.group(1), m.group(2), m.group(3)
        if host_env.get(name):
            return host_env[name]
        if op == ":?":
            raise LookupError(f"{name}: {rest}")
        return rest or ""

    return re.sub(r"\$\{(\w+)(:[-?])?([^}]*)\}", one, value)


def test_api_starts_with_the_keys_the_host_exports_and_says_what_is_missing():
    env = COMPOSE["services"]["api"]["environment"]
    # Without keys on the host, compose itself stops with a message that says what to set,
    # instead of an API that exits at start and a worker that waits on it forever.
    try:
        {k: _interpolate(str(v), {}) for k, v in env.items()}
    except LookupError as exc:
        assert "LORACLE_API_KEY_HASHES" in str(exc) and "SHA-256" in str(exc)
    else:
        raise AssertionError("the api service starts without API keys")
    hashes = digest("lor_compose-test-key")
    resolved = {k: _interpolate(str(v), {"LORACLE_API_KEY_HASHES": hashes}) for k, v in env.items()}
    settings = Settings(
        **{k.removeprefix("LORACLE_").lower(): v for k, v in resolved.items()},
    )
    assert configuration_problem(settings) is None
    assert settings.api_key_hashes == hashes


def _stage_installs(stage: str) -> list[list[str]]:
    """The `pip install` commands of a Dockerfile stage, in order, as argument lists."""
    stages = re.split(r"^FROM \S+ AS (\w+)$", DOCKERFILE, flags=re.M)
    body = dict(zip(stages[1::2], stages[2::2], strict=True))[stage]
    runs = re.findall(r"^RUN (.*?)(?<!\\)$", body.replace("\\\n", " "), flags=re.M | re.S)
    return [
        shlex.split(command)[2:]
        for run in runs
        for command in run.split("&&")
        if shlex.split(command)[:2] == ["pip", "install"]
    ]


def test_api_image_can_trace_with_a_cpu_torch():
    """POST /v1/estimates with method "trace" runs `python -m worker trace` inside the api
    container: its image needs the worker extra, with torch's CPU build (meta tensors need no
    CUDA) installed before the extra so the extra's pin is met by it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    worker_extra = pyproject["project"]["optional-dependencies"]["worker"]
    torch_pin = next(d for d in worker_extra if d.startswith("torch=="))
    installs = _stage_installs("api")
    cpu = [i for i, args in enumerate(installs) if "https://download.pytorch.org/whl/cpu" in args]
    assert cpu, "the api stage does not install torch from the CPU wheel index"
    assert torch_pin in installs[cpu[0]] and "--index-url" in installs[cpu[0]]
    extras = [
        (i, set(m.group(1).split(",")))
        for i, args in enumerate(installs)
        for arg in args
        if (m := re.fullmatch(r"\.\[([\w,]+)\]", arg))
    ]
    assert any(i > cpu[0] and "worker" in names for i, names in extras), installs
    # The worker image keeps PyPI's CUDA build.
    assert not any("download.pytorch.org" in a for args in _stage_installs("worker") for a in args)
