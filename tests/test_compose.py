"""docker-compose.yml cannot run here (no Docker engine): check it is right by construction."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from api.security import configuration_problem, digest
from cli.main import app
from loracle.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()


SERVICES = {"postgres", "redis", "api", "flower", "worker-gpu", "worker-cpu"}
WORKERS = ("worker-gpu", "worker-cpu")
# What the host exports before `docker compose up` (the file's header lists them).
HOST_ENV = {
    "LORACLE_API_KEY_HASHES": digest("lor_compose-test-key"),
    "LORACLE_WORKER_TOKEN": "lorw_compose-test-token",
    "LORACLE_WORKER_TOKEN_HASHES": digest("lorw_compose-test-token"),
    "POSTGRES_PASSWORD": "pg-secret",
    "REDIS_PASSWORD": "redis-secret",
    "FLOWER_BASIC_AUTH": "ops:secret",
}


def service_env(name: str, host_env: dict[str, str] | None = None) -> dict[str, str]:
    env = COMPOSE["services"][name].get("environment", {})
    return {
        k: _interpolate(str(v), HOST_ENV if host_env is None else host_env) for k, v in env.items()
    }


def test_services_profiles_and_health_ordering():
    services = COMPOSE["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    # The store, the broker, the API and Flower start by default; workers by profile.
    assert {n for n, s in services.items() if "profiles" not in s} == {
        "postgres",
        "redis",
        "api",
        "flower",
    }
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    healthy = {"condition": "service_healthy"}
    assert services["api"]["depends_on"] == {"postgres": healthy, "redis": healthy}
    for name in WORKERS:
        assert services[name]["depends_on"] == {
            "postgres": healthy,
            "redis": healthy,
            "api": healthy,
        }
        assert services[name]["command"][:2] == ["loracle", "worker"]


def test_redis_keeps_its_queue_in_an_append_only_file():
    command = COMPOSE["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in COMPOSE["services"]["redis"]["volumes"]


def test_the_store_is_postgresql_for_the_api_and_every_worker():
    assert COMPOSE["services"]["postgres"]["image"].startswith("postgres:")
    for name in ("api", *WORKERS):
        url = service_env(name)["LORACLE_DATABASE_URL"]
        assert url == "postgresql+psycopg://loracle:pg-secret@postgres:5432/loracle", name
        broker = service_env(name)["LORACLE_BROKER_URL"]
        assert broker == "redis://:redis-secret@redis:6379/0", name
    # On a GPU host of its own the same file points the worker at the API host.
    remote = service_env(
        "worker-gpu", {**HOST_ENV, "STORE_HOST": "a", "BROKER_HOST": "a", "API_HOST": "a"}
    )
    assert (
        "@a:5432/" in remote["LORACLE_DATABASE_URL"] and "@a:6379/" in remote["LORACLE_BROKER_URL"]
    )
    assert remote["LORACLE_API_URL"] == "http://a:8000"


def test_workers_share_no_volume_with_the_api_and_move_files_over_it():
    api = COMPOSE["services"]["api"]
    api_volumes = {v.split(":")[0] for v in api["volumes"]}
    api_dir = service_env("api")["LORACLE_DATA_DIR"]
    for name in WORKERS:
        worker = COMPOSE["services"][name]
        volumes = {v.split(":")[0] for v in worker.get("volumes", [])}
        assert not volumes & api_volumes, name
        assert all(not v.startswith(("/", ".")) for v in volumes), "no host directory either"
        env = service_env(name)
        assert env["LORACLE_DATA_DIR"] != api_dir
        assert env["LORACLE_API_URL"] == "http://api:8000"
        # A valid remote-mode worker: its token is one the API accepts, and not an API key.
        settings = Settings(
            **{
                k.removeprefix("LORACLE_").lower(): v
                for k, v in env.items()
                if k.startswith("LORACLE_")
            }
        )
        assert settings.api_url and settings.worker_token
        assert digest(settings.worker_token) in service_env("api")["LORACLE_WORKER_TOKEN_HASHES"]
        assert digest(settings.worker_token) not in service_env("api")["LORACLE_API_KEY_HASHES"]


def test_every_loracle_variable_set_is_a_setting():
    fields = {f"LORACLE_{name.upper()}" for name in Settings.model_fields}
    for name, service in COMPOSE["services"].items():
        for key in service.get("environment", {}):
            if key.startswith("LORACLE_"):
                assert key in fields, f"{name} sets {key}, which loracle/settings.py does not read"


def test_worker_gpu_reserves_a_gpu_and_the_cpu_worker_none():
    devices = COMPOSE["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in COMPOSE["services"]["worker-cpu"]
    assert float(service_env("worker-cpu")["LORACLE_WORKER_MEMORY_GIB"]) > 0


def test_flower_watches_the_broker_behind_a_password():
    flower = COMPOSE["services"]["flower"]
    assert flower["build"]["target"] == "flower"
    assert "flower" in " ".join(flower["command"]) and "--port=5555" in " ".join(flower["command"])
    assert "5555:5555" in flower["ports"]
    env = service_env("flower")
    assert env["FLOWER_BASIC_AUTH"] == "ops:secret"
    assert env["LORACLE_BROKER_URL"] == service_env("api")["LORACLE_BROKER_URL"]
    with pytest.raises(LookupError, match="FLOWER_BASIC_AUTH"):
        service_env("flower", {k: v for k, v in HOST_ENV.items() if k != "FLOWER_BASIC_AUTH"})
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(
        d.startswith("flower==") for d in pyproject["project"]["optional-dependencies"]["monitor"]
    )
    assert "'.[monitor]'" in DOCKERFILE


def test_images_and_commands_exist():
    targets = set(re.findall(r"^FROM \S+ AS (\w+)$", DOCKERFILE, flags=re.M))
    commands = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    for name in ("api", "flower", *WORKERS):
        assert COMPOSE["services"][name]["build"]["target"] in targets
    assert {"serve", "worker"} <= commands
    assert 'CMD ["loracle", "serve"' in DOCKERFILE
    # Every package the `loracle` command needs is copied into the images.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert f"COPY {package} ./{package}" in DOCKERFILE, package


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
    # Without keys on the host, compose itself stops with a message that says what to set,
    # instead of an API that exits at start and a worker that waits on it forever.
    for missing in ("LORACLE_API_KEY_HASHES", "LORACLE_WORKER_TOKEN_HASHES", "POSTGRES_PASSWORD"):
        with pytest.raises(LookupError, match=missing):
            service_env("api", {k: v for k, v in HOST_ENV.items() if k != missing})
    with pytest.raises(LookupError, match="LORACLE_WORKER_TOKEN"):
        service_env(
            "worker-gpu", {k: v for k, v in HOST_ENV.items() if k != "LORACLE_WORKER_TOKEN"}
        )
    env = service_env("api")
    settings = Settings(
        **{
            k.removeprefix("LORACLE_").lower(): v
            for k, v in env.items()
            if k.startswith("LORACLE_")
        }
    )
    assert configuration_problem(settings) is None
    assert settings.api_key_hashes == HOST_ENV["LORACLE_API_KEY_HASHES"]
    assert settings.api_url is None  # the API serves files; it fetches none


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
    """POST /v1/estimates with method "trace" runs `python -m memtrace` inside the api
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
