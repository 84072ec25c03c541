"""Fixtures every test package shares, written once: the model root with a tiny Llama built
offline (with and without a chat template), data files of every format, the tiny model's
tokenizer, and databases of their own on the machine's Redis. Package conftests add only
what their package alone needs (real services for e2e, short leases for reliability)."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.api import client_for, settings_for
from tests.utils.builders import build_tiny_llama, write_jsonl
from tests.utils.service import REDIS_HOST, REDIS_PORT, flush_redis_db, redis_available

FORMATS = ("text", "prompt_completion", "messages")

# No test reaches the internet: the hub's address (HF_ENDPOINT, read by loracle/hub.py and by
# huggingface_hub) is a local port that refuses connections, bound and never listening, for
# this process and every service it starts. A hub id submitted by a test gets a 503 at once;
# the hub check's own tests start a stand-in hub (tests/utils/hub.py).
_NO_HUB = socket.socket()
_NO_HUB.bind(("127.0.0.1", 0))
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{_NO_HUB.getsockname()[1]}"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The allowed model root; every model the tests build lives under it."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(model_root: Path) -> Path:
    return build_tiny_llama(model_root / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_model_plain(model_root: Path) -> Path:
    """The same model with a tokenizer that has no chat template and no pad token."""
    return build_tiny_llama(model_root / "tiny-llama-plain", chat_template=False, pad_token=False)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 training rows and 8 validation rows of each format: `<format>.jsonl` and
    `<format>-validation.jsonl`."""
    directory = tmp_path_factory.mktemp("data")
    for fmt in FORMATS:
        write_jsonl(directory / f"{fmt}.jsonl", fmt, n_rows=64, seed=0)
        write_jsonl(directory / f"{fmt}-validation.jsonl", fmt, n_rows=8, seed=1)
    return directory


@pytest.fixture(scope="session")
def datasets(data_dir: Path) -> dict[str, Path]:
    """The training file of each format, by format."""
    return {fmt: data_dir / f"{fmt}.jsonl" for fmt in FORMATS}


@pytest.fixture(scope="session")
def train_file(datasets: dict[str, Path]) -> Path:
    return datasets["text"]


@pytest.fixture(scope="session")
def tokenizer(tiny_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


# Databases 1-15 are lent to tests, one holder each: two services on one database would
# take each other's messages (their workers consume the same queue names) and a flush for
# one would drop the other's. A claim is a key in database 0, so that concurrent test
# sessions on the machine (a CI run beside a developer's) lend each database once too.
_CLAIM_TTL_S = 4 * 3600


def _claim_key(db: int) -> str:
    return f"loracle-tests:redis-db:{db}"


def _empty_redis_db() -> int:
    """A database of its own on the machine's Redis (started by .ci/run), emptied."""
    import redis

    assert redis_available(), (
        "Redis is not running on 127.0.0.1:6379; start it (scripts/services.sh does)"
    )
    claims = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    deadline = time.monotonic() + 600
    while True:
        for db in random.sample(range(1, 16), 15):
            if claims.set(_claim_key(db), os.getpid(), nx=True, ex=_CLAIM_TTL_S):
                flush_redis_db(db)
                return db
        assert time.monotonic() < deadline, "all 15 Redis test databases stayed claimed"
        time.sleep(1)


def _release_redis_db(db: int) -> None:
    import redis

    flush_redis_db(db)
    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0).delete(_claim_key(db))


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """One Redis database for a whole session of services that share it."""
    db = _empty_redis_db()
    yield db
    _release_redis_db(db)


@pytest.fixture()
def fresh_redis_db() -> Iterator[int]:
    """A Redis database for one test, emptied before and after it."""
    db = _empty_redis_db()
    yield db
    _release_redis_db(db)


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory: pytest.TempPathFactory):
    """Settings of an in-process API with a data directory of its own (tests/utils/api.py)."""
    return settings_for(tmp_path_factory.mktemp("api-data"))


@pytest.fixture(scope="module")
def client(api_settings):
    """FastAPI's TestClient on the API, with the test keys (tests/utils/api.py)."""
    with client_for(api_settings) as c:
        yield c
