"""Jobs on several cards, on the CPU: 2 ranks under torchrun with gloo, on the tiny model.

Each run is a real `python -m torch.distributed.run --nproc_per_node 2 -m worker train`
(about 15 s on 2 cores), so the runs are shared by the tests of this module: one reference
run on 2 ranks, one on 1 process with the same effective batch, and one run whose rank 1
is killed, then resumed on 2 ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from loracle.plan import load_plan
from tests.utils.builders import plan_dict
from worker import distributed

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8
# The 2-rank run takes 2 micro-batches of 2 rows per optimizer step (one per rank), the
# 1-process run accumulates 2 micro-batches of 2: the same 4 rows per step.
TWO_RANKS = {"micro_batch_size": 2, "gradient_accumulation_steps": 1}
ONE_PROCESS = {"micro_batch_size": 2, "gradient_accumulation_steps": 2}
# Why 1e-3 (relative, every logged step): both runs see the same rows in each optimizer step
# (accelerate's seeded sampler deals batch 2k to rank 0 and 2k+1 to rank 1, which the one
# process accumulates in that order) and average the loss over the same tokens (transformers
# counts them across ranks), so they compute the same gradient up to the order of the
# floating-point additions (one all-reduce of two partial sums against two accumulated
# micro-batches): measured identical to 6 significant figures. A real difference is far
# larger: each step moves the loss by 1-4% at this learning rate, and a gradient summed
# instead of averaged, or ranks seeing the same rows, changes the losses from step 2 on.
LOSS_RTOL = 1e-3
LAUNCH_TIMEOUT_S = 180


def _plan(tmp: Path, tiny_model: Path, train_file: Path, name: str, **extra: Any) -> Path:
    body = plan_dict(
        tiny_model, train_file, tmp / name, max_steps=STEPS, checkpoint_steps=2, **extra
    )
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(body))
    return path


def _torchrun(plan: Path, result: Path, nproc: int, **env: str) -> subprocess.CompletedProcess:
    command = distributed.launch_command(plan, result, nproc)
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **env},
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )


def _rank_lines(stderr: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith('{"rank"')]
    return sorted(lines, key=lambda line: line["rank"])


def _losses(result: dict[str, Any]) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in result["losses"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model: Path, train_file: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("distributed")
    out: dict[str, Any] = {"tmp": tmp}
    # With a validation file: the 1-process run ends with the base-vs-adapter comparison,
    # the 2-rank run skips it.
    valid = {"validation_file": str(train_file.with_name("text-validation.jsonl"))}
    plan = _plan(tmp, tiny_model, train_file, "two", **TWO_RANKS, **valid)
    started = time.monotonic()
    out["two"] = _torchrun(plan, tmp / "two-result.json", 2)
    out["two_seconds"] = time.monotonic() - started
    out["two_result"] = json.loads((tmp / "two-result.json").read_text())
    one = _plan(tmp, tiny_model, train_file, "one", **ONE_PROCESS, **valid)
    out["one"] = subprocess.run(
        [sys.executable, "-m", "worker", "train", "--plan", str(one)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    out["one_result"] = json.loads(out["one"].stdout)
    return out


def test_two_ranks_match_one_process_with_the_same_effective_batch(runs):
    assert runs["two"].returncode == 0, runs["two"].stderr[-3000:]
    two, one = _losses(runs["two_result"]), _losses(runs["one_result"])
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    for step in two:
        assert two[step] == pytest.approx(one[step], rel=LOSS_RTOL), (step, two, one)
    assert two[STEPS] < two[1], "the 2-rank run learns"


def test_every_rank_trains_every_step_and_only_rank_0_writes_the_adapter(runs):
    ranks = _rank_lines(runs["two"].stderr)
    assert ranks == [
        {"rank": 0, "status": "succeeded", "steps": STEPS, "adapter": True},
        {"rank": 1, "status": "succeeded", "steps": STEPS, "adapter": False},
    ]
    output = runs["tmp"] / "two"
    weights = sorted(p.relative_to(output) for p in output.rglob("adapter_model.safetensors"))
    published = [p for p in weights if p.parts[0] == "adapter"]
    assert published == [Path("adapter/adapter_model.safetensors")], weights
    assert sorted(p.name for p in output.iterdir()) == ["adapter", "checkpoints"]
    # rank 0 alone reports: one `finished` event, one progress line per step
    events = [json.loads(line) for line in runs["two"].stderr.splitlines() if line[:2] == '{"']
    assert sum(1 for e in events if e.get("event") == "finished") == 1
    assert [e["progress"] for e in events if "progress" in e] == list(range(1, STEPS + 1))
    # the result is rank 0's, on the --result file and not on stdout
    assert runs["two"].stdout.strip() == ""
    assert runs["two_result"]["artifacts"]["adapter_dir"] == str(output / "adapter")


def test_several_ranks_skip_the_base_against_the_adapter_and_say_so(runs):
    from worker.evaluation import MULTI_RANK_SKIP

    skipped = {"skipped": MULTI_RANK_SKIP}
    metrics = json.loads((runs["tmp"] / "two" / "adapter" / "metrics.json").read_text())
    assert metrics["comparison"] == runs["two_result"]["comparison"] == skipped
    events = [json.loads(line) for line in runs["two"].stderr.splitlines() if line[:2] == '{"']
    (event,) = [e for e in events if e.get("event") == "evaluation"]  # rank 0's, once
    assert event["skipped"] == MULTI_RANK_SKIP and event["message"].startswith("evaluation skipped")
    # The same plan in one process compares them.
    one = runs["one_result"]["comparison"]
    assert one["validation_rows"] == 8 and one["adapter"]["loss"] < one["base"]["loss"]


def test_a_killed_rank_ends_the_launch_and_the_checkpoints_resume_on_two_ranks(
    runs, tiny_model: Path, train_file: Path
):
    tmp = runs["tmp"]
    plan = _plan(tmp, tiny_model, train_file, "killed", **TWO_RANKS)
    started = time.monotonic()
    killed = _torchrun(plan, tmp / "killed-result.json", 2, LORACLE_FAULT_KILL_RANK="1:5")
    elapsed = time.monotonic() - started
    # No hang: torchrun sees rank 1 die and stops rank 0, which was waiting in a collective.
    assert killed.returncode != 0
    assert elapsed < runs["two_seconds"] + 60, (elapsed, killed.stderr[-3000:])
    assert "SIGKILL" in killed.stderr or "Signal 9" in killed.stderr, killed.stderr[-3000:]
    assert not (tmp / "killed" / "adapter").exists()
    assert not any(r["status"] == "succeeded" for r in _rank_lines(killed.stderr))

    resumed = _torchrun(plan, tmp / "resumed-result.json", 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((tmp / "resumed-result.json").read_text())
    assert result["status"] == "succeeded" and result["steps"] == STEPS
    # checkpoints every 2 steps; rank 1 died after step 5 was logged: resumed from step 4
    assert result["resumed_from_step"] == 4
    assert [r["steps"] for r in _rank_lines(resumed.stderr)] == [STEPS, STEPS]
    # the resumed steps are the uninterrupted run's (same rows, same state: RNG, optimizer,
    # scheduler, all from the checkpoint)
    reference, after = _losses(runs["two_result"]), _losses(result)
    for step in range(5, STEPS + 1):
        assert after[step] == pytest.approx(reference[step], rel=LOSS_RTOL), step


def test_the_plan_strategy_gives_the_trainer_its_distributed_arguments(
    tmp_path, tiny_model, train_file, monkeypatch
):
    plan = load_plan(plan_dict(tiny_model, train_file, tmp_path))
    assert distributed.trainer_arguments(plan, "cpu") == {}  # one process: nothing
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LORACLE_COLLECTIVE_TIMEOUT_S", "42")
    from loracle.settings import get_settings

    get_settings.cache_clear()
    try:
        ddp = distributed.trainer_arguments(plan.model_copy(update={"strategy": "ddp"}), "cpu")
        fsdp = distributed.trainer_arguments(
            plan.model_copy(update={"strategy": "fsdp", "gradient_checkpointing": True}), "cuda"
        )
    finally:
        get_settings.cache_clear()
    assert ddp == {"ddp_backend": "gloo", "ddp_timeout": 42, "ddp_find_unused_parameters": False}
    assert fsdp["ddp_backend"] == "nccl" and fsdp["fsdp"] is True
    assert fsdp["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["fsdp_config"]["activation_checkpointing"] is True
    assert fsdp["gradient_checkpointing"] is False


def test_fsdp_stores_4bit_weights_in_the_compute_dtype(tmp_path, tiny_model, train_file):
    import torch

    from loracle.recipe import make_bnb_config, model_load_kwargs

    plan = load_plan(plan_dict(tiny_model, train_file, tmp_path, variant="qlora", precision="bf16"))
    assert make_bnb_config(plan, torch.bfloat16).bnb_4bit_quant_storage == torch.uint8
    sharded = plan.model_copy(update={"strategy": "fsdp"})
    assert make_bnb_config(sharded, torch.bfloat16).bnb_4bit_quant_storage == torch.bfloat16
    # DDP: each rank loads onto its own card; FSDP: no device map, FSDP places the shards
    assert model_load_kwargs(plan, "cuda")["device_map"] == {"": 0}
    assert "device_map" not in model_load_kwargs(sharded, "cuda")


def test_a_cpu_worker_with_two_cards_takes_two_card_jobs(tmp_path, monkeypatch):
    from loracle.settings import Settings
    from worker import fleet

    settings = Settings(data_dir=tmp_path, worker_memory_gib=8, worker_cpu_cards=2)
    two = fleet.describe(settings, [], concurrency=1)
    assert [c["total_gib"] for c in two.cards] == [8, 8]
    assert [q.rsplit(".", 1)[1] for q in two.queues] == ["x1", "x2"]
    # several jobs at once: each takes one card, never two
    assert [q.rsplit(".", 1)[1] for q in fleet.describe(settings, [], 2).queues] == ["x1"]


@pytest.mark.parametrize(("concurrency", "pinned"), [("1", "0,1"), ("2", "1")])
def test_a_pool_process_is_pinned_to_one_card_only_when_jobs_share_the_worker(
    monkeypatch, concurrency, pinned
):
    from billiard import process

    from worker.tasks import _pin_one_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("LORACLE_WORKER_CONCURRENCY", concurrency)
    monkeypatch.setattr(process.current_process(), "index", 1, raising=False)
    _pin_one_gpu()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == pinned


def test_a_one_card_job_on_a_several_card_worker_sees_the_first_card(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    distributed._one_card_of_several()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"


def test_a_failed_launch_names_the_rank_and_the_launchers_summary(tmp_path):
    result, log = tmp_path / "result.json", tmp_path / "torchrun.log"
    log.write_text("...\nRoot Cause (first observed failure):\n  rank 1 exitcode -9\n")
    with pytest.raises(distributed.DistributedRunFailed, match=r"exited with 1(.|\n)*rank 1"):
        distributed._outcome(1, result, log, 2)
    result.write_text(json.dumps({"error": "LeaseLost", "detail": "another process owns it"}))
    from worker.errors import LeaseLost

    with pytest.raises(LeaseLost, match="another process"):
        distributed._outcome(1, result, log, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["lora", "qlora"])
def test_fsdp_on_two_cards_writes_one_whole_adapter(tmp_path, tiny_model, train_file, variant):
    """FSDP (FSDP-QLoRA for 4-bit) on 2 CUDA cards: the adapter rank 0 writes is the full,
    gathered one, and it loads back on one process. Needs 2 cards; on one it cannot run."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA cards")
    body = plan_dict(
        tiny_model, train_file, tmp_path / "out", max_steps=4, variant=variant, strategy="fsdp"
    )
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(body))
    run = _torchrun(plan, tmp_path / "result.json", 2, CUDA_VISIBLE_DEVICES="0,1")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "succeeded" and result["steps"] == 4
    assert [r["adapter"] for r in _rank_lines(run.stderr)] == [True, False]
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "out" / "adapter" / "adapter_model.safetensors")
    lora_a = [w for name, w in weights.items() if "lora_A" in name]
    assert lora_a and all(w.shape[0] == body["lora_rank"] for w in lora_a)  # whole, not shards


def test_the_ranks_die_with_the_process_that_launched_them(tmp_path, tiny_model, train_file):
    """A pool process killed mid-job (out of memory, a worker stopped hard) takes its launcher
    and ranks with it: nothing keeps training, or writing to the job, behind its back."""
    import psutil

    body = plan_dict(tiny_model, train_file, tmp_path / "out", max_steps=5000, **TWO_RANKS)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(body))
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from loracle.plan import load_plan; from worker import distributed; "
            "distributed.launch(load_plan(sys.argv[1]), 2, resume=False)",
            str(plan),
        ],
        cwd=ROOT,
    )
    log = tmp_path / "out" / distributed.RUN_DIRNAME / "torchrun.log"
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not (log.exists() and '{"progress": 2' in log.read_text(errors="replace")):
        assert time.monotonic() < deadline and launcher.poll() is None, "the ranks never trained"
        time.sleep(0.5)
    family = psutil.Process(launcher.pid).children(recursive=True)
    assert len(family) >= 3  # torchrun and its 2 ranks
    launcher.kill()
    launcher.wait()
    _, alive = psutil.wait_procs(family, timeout=60)
    survivors = [p.cmdline()[:6] for p in alive]
    for orphan in alive:  # this test's own processes: leave nothing training
        orphan.kill()
    assert survivors == []
