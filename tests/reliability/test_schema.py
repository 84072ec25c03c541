"""Schemathesis against the service's own OpenAPI schema: no 5xx, and every
answer matches the schema it documents."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.utils.api import KEY_A, client_for, settings_for

_settings = settings_for(Path(tempfile.mkdtemp(prefix="loracle-schema-")), max_upload_bytes=4096)
_client = client_for(_settings)
schema = schemathesis.openapi.from_asgi("/openapi.json", _client.app)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY_A}"}, checks=CHECKS)
