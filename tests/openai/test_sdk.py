"""The official `openai` SDK, unchanged, against a running service (an API and a CPU worker on
the embedded broker) with a loracle key: files, fine-tuning jobs, their events and
checkpoints, and errors the SDK reads. loracle's own fields go in `extra_body`, its knobs in
the same `hyperparameters` as OpenAI's."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.utils.api import KEY_A
from tests.utils.builders import write_jsonl
from tests.utils.service import Service

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, model_root: Path, tiny_model: Path
) -> Iterator[Service]:
    # Steps of at least 0.1 s: a pause or cancel lands mid-run on however fast a machine.
    s = Service.create(
        tmp_path_factory.mktemp("openai-service"), model_root, LORACLE_FAULT_STEP_DELAY_S="0.1"
    )
    s.start_api()
    s.start_worker("--memory-gib", "24")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(service: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=KEY_A, max_retries=0)


@pytest.fixture(scope="module")
def train_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", "text", n_rows=24)


def _wait(client: openai.OpenAI, job_id: str, done: set[str], timeout: float = 240):
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in done:
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    return job


def test_files_create_retrieve_list_content_and_delete(client: openai.OpenAI, train_path: Path):
    with train_path.open("rb") as fh:
        created = client.files.create(file=fh, purpose="fine-tune")
    assert created.id.startswith("file-") and created.purpose == "fine-tune"
    assert created.bytes == train_path.stat().st_size and created.status == "processed"
    assert client.files.retrieve(created.id).filename == "train.jsonl"
    assert client.files.content(created.id).read() == train_path.read_bytes()
    assert created.id in [f.id for f in client.files.list(purpose="fine-tune")]
    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError) as gone:
        client.files.retrieve(created.id)
    assert gone.value.code == "not_found" and "no file" in gone.value.message


def test_a_job_runs_through_the_sdk_with_loracles_knobs_beside_openais(
    client: openai.OpenAI, service: Service, tiny_model: Path, train_path: Path
):
    with train_path.open("rb") as fh:
        training = client.files.create(file=fh, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=str(tiny_model),
        training_file=training.id,
        suffix="sdk-test",
        seed=7,
        metadata={"team": "nlp"},
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 1,
                    "batch_size": 2,
                    "learning_rate_multiplier": 2.0,
                }
            },
        },
        extra_body={
            "variant": "lora",
            "hyperparameters": {"max_steps": 6, "seq_len": 32, "checkpoint_steps": 2},
        },
    )
    assert job.object == "fine_tuning.job" and job.status == "queued"
    assert job.user_provided_suffix == "sdk-test" and job.seed == 7
    assert job.metadata == {"team": "nlp"}
    hp = job.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (1, 2, 2.0)
    # loracle's knobs are in the same object, and what the multiplier multiplied is the
    # plan's learning rate (no architecture from the catalog: the plan's default 2e-4).
    extra = hp.model_extra or {}
    assert extra["max_steps"] == 6 and extra["gradient_accumulation_steps"] == 2
    assert extra["learning_rate"] == pytest.approx(4e-4)

    done = _wait(client, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", (done.error, service.log_tail())
    assert done.fine_tuned_model == f"ft:{tiny_model}:sdk-test:{job.id}"
    assert done.trained_tokens and done.trained_tokens > 0
    assert done.integrations == [] and done.error is None
    (result,) = done.result_files
    metrics = json.loads(client.files.content(result).read())
    assert metrics["steps"] == 6

    listed = [j.id for j in client.fine_tuning.jobs.list(limit=1)]  # auto-paging, one a page
    assert job.id in listed
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=3))  # auto-paging
    assert len(events) > 3 and {"status", "metrics", "checkpoint"} <= {e.type for e in events}

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=1))
    steps = [c.step_number for c in checkpoints]
    assert steps == sorted(steps, reverse=True) and steps[0] == 6, steps
    newest = checkpoints[0]
    assert newest.fine_tuning_job_id == job.id and newest.metrics.train_loss is not None
    # Its files, as a tar archive the service streams.
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {KEY_A}"}) as c:
        tar = c.get(f"/v1/fine_tuning/jobs/{job.id}/checkpoints/{newest.id}/content")
    assert tar.status_code == 200, tar.text
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        names = archive.getnames()
    assert f"{newest.id}/adapter_model.safetensors" in names

    # A file a job uses cannot be deleted while the job may still read it; afterwards it can.
    assert client.files.delete(training.id).deleted


def test_cancel_through_the_sdk(client: openai.OpenAI, tiny_model: Path, train_path: Path):
    with train_path.open("rb") as fh:
        training = client.files.create(file=fh, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=str(tiny_model),
        training_file=training.id,
        extra_body={"variant": "lora", "hyperparameters": {"max_steps": 5000, "seq_len": 32}},
    )
    with pytest.raises(openai.ConflictError) as in_use:
        client.files.delete(training.id)
    assert in_use.value.code == "file_in_use" and job.id in in_use.value.message
    client.fine_tuning.jobs.cancel(job.id)
    assert _wait(client, job.id, {"cancelled", "succeeded", "failed"}).status == "cancelled"


def test_errors_are_openais_and_name_the_field(client: openai.OpenAI, train_path: Path):
    with train_path.open("rb") as fh:
        training = client.files.create(file=fh, purpose="fine-tune")
    with pytest.raises(openai.UnprocessableEntityError) as dpo:
        client.fine_tuning.jobs.create(
            model="anything", training_file=training.id, method={"type": "dpo"}
        )
    assert dpo.value.param == "method" and "supervised" in dpo.value.message
    with pytest.raises(openai.UnprocessableEntityError) as quoted:
        client.fine_tuning.jobs.create(
            model="anything", training_file=training.id, hyperparameters={"n_epochs": "3"}
        )
    assert quoted.value.param == "hyperparameters.n_epochs"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("job-000000000000000000000000")
    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        bad.fine_tuning.jobs.list()
    assert denied.value.code == "unauthorized"


def _losses(client: openai.OpenAI, job_id: str) -> dict[int, float]:
    """Each logged step's training loss (a step logged again after a resume: the last)."""
    out: dict[int, float] = {}
    for e in client.fine_tuning.jobs.list_events(job_id, limit=100):
        data = e.data or {}
        if e.type == "metrics" and data.get("loss") is not None:  # not a validation's
            out[int(data["step"])] = float(data["loss"])
    return out


# Resume restores the model, the optimizer, the scheduler, the data order and the RNG from the
# checkpoint, and the CPU computes in fp32: the curves agree to rounding. The tolerance leaves
# room for summation order in the resumed process, nothing more.
LOSS_TOLERANCE = 1e-4


def test_a_paused_and_resumed_job_follows_the_uninterrupted_loss_curve(
    client: openai.OpenAI, service: Service, tiny_model: Path, train_path: Path
):
    with train_path.open("rb") as fh:
        training = client.files.create(file=fh, purpose="fine-tune")
    settings = {"max_steps": 30, "seq_len": 32, "seed": 3, "checkpoint_steps": 1000}

    def submit():
        return client.fine_tuning.jobs.create(
            model=str(tiny_model),
            training_file=training.id,
            extra_body={"variant": "lora", "hyperparameters": settings},
        )

    straight = submit()
    assert _wait(client, straight.id, {"succeeded", "failed"}).status == "succeeded"

    paused = submit()
    deadline = time.monotonic() + 240
    while client.fine_tuning.jobs.retrieve(paused.id).model_extra["step"] < 5:  # type: ignore[index]
        assert time.monotonic() < deadline, service.log_tail()
        time.sleep(0.2)
    client.fine_tuning.jobs.pause(paused.id)
    at_pause = _wait(client, paused.id, {"paused", "succeeded", "failed"})
    assert at_pause.status == "paused", (at_pause, service.log_tail())
    step = at_pause.model_extra["step"]  # type: ignore[index]
    assert 5 <= step < 30
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(paused.id)] == [step]
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.pause(paused.id)  # a paused job is not paused again

    client.fine_tuning.jobs.resume(paused.id)
    done = _wait(client, paused.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", (done.error, service.log_tail())
    resumed = [e for e in client.fine_tuning.jobs.list_events(paused.id, limit=100)]
    assert any(e.type == "resumed" and (e.data or {}).get("step") == step for e in resumed)

    a, b = _losses(client, straight.id), _losses(client, paused.id)
    assert sorted(a) == sorted(b) == list(range(1, 31))
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst <= LOSS_TOLERANCE, (worst, a, b)
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.resume(paused.id)  # only a paused job resumes


def test_validation_every_eval_steps_and_a_job_from_an_earlier_checkpoint(
    client: openai.OpenAI, service: Service, tiny_model: Path, tmp_path: Path
):
    def upload(kind: str, seed: int) -> str:
        path = write_jsonl(tmp_path / f"{kind}-{seed}.jsonl", "text", n_rows=16, seed=seed)
        with path.open("rb") as fh:
            return client.files.create(file=fh, purpose="fine-tune").id

    train, valid, other = upload("train", 1), upload("valid", 2), upload("train", 3)
    knobs = {"seq_len": 32, "checkpoint_steps": 2, "eval_steps": 2, "seed": 5}
    first = client.fine_tuning.jobs.create(
        model=str(tiny_model),
        training_file=train,
        validation_file=valid,
        extra_body={"variant": "lora", "hyperparameters": {**knobs, "max_steps": 6}},
    )
    assert _wait(client, first.id, {"succeeded", "failed"}).status == "succeeded"
    evaluated = {
        int((e.data or {})["step"]): (e.data or {})["valid_loss"]
        for e in client.fine_tuning.jobs.list_events(first.id, limit=100)
        if e.type == "metrics" and (e.data or {}).get("valid_loss") is not None
    }
    assert sorted(evaluated) == [2, 4, 6], evaluated
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(first.id))
    assert checkpoints, "the checkpoints of steps 2, 4 and 6 (those kept on disk)"
    for c in checkpoints:
        assert c.metrics.valid_loss == c.metrics.full_valid_loss == evaluated[c.step_number]
    source = next(c for c in checkpoints if c.step_number < 6)

    # A different adapter shape cannot resume it: refused, naming the field.
    with pytest.raises(openai.UnprocessableEntityError) as wrong:
        client.fine_tuning.jobs.create(
            model=str(tiny_model),
            training_file=other,
            extra_body={
                "variant": "lora",
                "from_checkpoint": source.id,
                "hyperparameters": {"max_steps": 10, "lora_rank": 4},
            },
        )
    assert wrong.value.param == "hyperparameters.lora_rank", wrong.value.message

    second = client.fine_tuning.jobs.create(
        model=str(tiny_model),
        training_file=other,
        extra_body={
            "variant": "lora",
            "from_checkpoint": source.id,
            "hyperparameters": {"max_steps": 10, "seq_len": 32},
        },
    )
    done = _wait(client, second.id, {"succeeded", "failed"})
    assert done.status == "succeeded", (done.error, service.log_tail())
    assert (done.model_extra or {})["from_checkpoint"] == source.id
    events = list(client.fine_tuning.jobs.list_events(second.id, limit=100))
    assert any(e.type == "resumed" and (e.data or {})["step"] == source.step_number for e in events)
    steps = sorted(_losses(client, second.id))
    assert steps == list(range(source.step_number + 1, 11)), steps
