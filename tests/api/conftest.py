from __future__ import annotations

import pytest

from tests.utils.api import client_for, settings_for


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory):
    return settings_for(tmp_path_factory.mktemp("api-data"))


@pytest.fixture(scope="module")
def client(api_settings):
    with client_for(api_settings) as c:
        yield c
