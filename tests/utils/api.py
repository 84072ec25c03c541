"""In-process API clients for tests: the real app, with its settings swapped
through FastAPI's dependency overrides (never by patching)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.main import create_app
from api.security import digest
from loracle.settings import Settings

KEY_A, KEY_B = "lor_test_key_a", "lor_test_key_b"


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "api_key_hashes": f"{digest(KEY_A)},{digest(KEY_B)}",
        "dispatch_interval_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


def client_for(settings: Settings, key: str | None = KEY_A) -> TestClient:
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return TestClient(app, raise_server_exceptions=False, headers=headers)
