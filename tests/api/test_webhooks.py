"""Webhooks against a real API process and a real local receiver: registered per key, signed
as the Standard Webhooks spec says, sent from the outbox at least once with the same
webhook-id on every retry, and retried with backoff after refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from loracle.webhooks import backoff_s, signature
from tests.utils.api import KEY_B
from tests.utils.service import Service

pytestmark = pytest.mark.e2e


class Receiver:
    """An HTTP endpoint that refuses the first `refusals` deliveries (503), then takes them."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.seen: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.seen.append(
                    {"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                )
                refused = len(receiver.seen) <= receiver.refusals
                self.send_response(503 if refused else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def service(tmp_path: Path, model_root: Path) -> Iterator[Service]:
    # No worker: a job stays queued (placement waits for one) until it is cancelled.
    s = Service.create(tmp_path / "service", model_root, LORACLE_WEBHOOK_RETRY_BASE_S="0.3")
    s.start_api()
    try:
        yield s
    finally:
        s.stop()


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's side of the spec, written from it (not from loracle.webhooks)."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(sig.split(",", 1)[1], expected)
        for sig in headers["webhook-signature"].split()
    )


def test_a_cancelled_job_is_posted_signed_and_retried_with_the_same_id(
    service: Service, tiny_model: Path, train_file: Path
):
    receiver, other = Receiver(refusals=2), Receiver(refusals=0)
    with service.client() as c:
        made = c.post("/v1/webhooks", json={"url": receiver.url})
        assert made.status_code == 201, made.text
        endpoint = made.json()
        assert endpoint["secret"].startswith("whsec_")
        listed = c.get("/v1/webhooks").json()["data"]
        assert [e["id"] for e in listed] == [endpoint["id"]] and listed[0]["secret"] is None
    with service.client(KEY_B) as b:  # another key's endpoint never hears of this job
        assert b.post("/v1/webhooks", json={"url": other.url}).status_code == 201

    file_id = service.upload(train_file)["id"]
    job = service.submit({"model": str(tiny_model), "training_file": file_id, "variant": "lora"})
    with service.client() as c:
        assert c.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"

    deadline = time.monotonic() + 60
    while len(receiver.seen) < 3:
        assert time.monotonic() < deadline, (receiver.seen, service.log_tail())
        time.sleep(0.2)
    tries = receiver.seen
    ids = {t["headers"]["webhook-id"] for t in tries}
    assert len(ids) == 1, "every retry carries the same webhook-id"
    for t in tries:
        assert _verify(endpoint["secret"], t["headers"], t["body"]), t
        payload = json.loads(t["body"])
        assert payload["type"] == "fine_tuning.job.cancelled"
        assert payload["data"] == {"id": job["id"], "status": "cancelled"}
    stamps = [int(t["headers"]["webhook-timestamp"]) for t in tries]
    assert stamps == sorted(stamps)
    time.sleep(1.5)
    assert len(receiver.seen) == 3, "delivered once taken: no more tries"
    assert other.seen == []
    with service.client() as c:
        (delivery,) = c.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["data"]
    assert delivery["id"] in ids and delivery["attempts"] == 3 and delivery["delivered"]
    assert delivery["last_error"] is None


def test_bad_endpoints_are_refused_by_field(service: Service):
    with service.client() as c:
        for body, field in (
            ({"url": "ftp://example.org/x"}, "url"),
            ({"url": "http://127.0.0.1/x", "events": ["fine_tuning.job.started"]}, "events.0"),
            ({"url": "http://127.0.0.1/x", "extra": 1}, "extra"),
        ):
            r = c.post("/v1/webhooks", json=body)
            assert r.status_code == 422, r.text
            assert r.json()["problems"][0]["field"] == field, r.text
        assert c.delete("/v1/webhooks/wh-nope").status_code == 404


def test_signature_and_backoff_follow_the_spec():
    # The Standard Webhooks spec's own example (its README): secret, id, timestamp, body.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert (
        signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    assert [backoff_s(5, n) for n in (1, 2, 3)] == [5, 10, 20]
    assert backoff_s(5, 30) == 3600
