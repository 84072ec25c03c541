"""The API installs without the training stack (`pip install loracle`, no `worker` extra):
building the app and answering a recommendation must not import torch or its libraries."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_api_answers_without_importing_the_training_stack(tmp_path):
    code = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from api.main import create_app\n"
        "from loracle.settings import Settings\n"
        f"app = create_app(Settings(data_dir={str(tmp_path)!r}, auth_disabled=True))\n"
        "with TestClient(app) as client:\n"
        "    r = client.post('/v1/recommendations', json={'hardware': {'gpu': 't4'}, "
        "'model': {'name': 'meta-llama/Llama-2-7b-hf'}})\n"
        "    assert r.status_code == 200, r.text\n"
        "    assert client.get('/v1/catalog/gpus').status_code == 200\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', "
        "'accelerate', 'matplotlib') if m in sys.modules)\n"
        "print(json.dumps(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
