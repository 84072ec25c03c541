from __future__ import annotations

import re

import pytest

from advisor import evidence
from advisor.decide import recommend
from advisor.errors import InvalidInput
from advisor.profile import Profile

MODEL = {"name": "meta-llama/Llama-2-7b-hf"}
SHORT = {"seq_len": 512}


def advise(priority="none", gap=False, memory=80.0, gpu=None, model=MODEL, training=SHORT, count=1):
    hardware = (
        {"gpu": gpu, "gpu_count": count} if gpu else {"gpu_memory_gib": memory, "gpu_count": count}
    )
    return recommend(
        Profile.model_validate(
            {
                "hardware": hardware,
                "model": model,
                "training": training,
                "goal": {"priority": priority, "lora_quality_gap": gap},
            }
        )
    )


def decided_by(answer):
    return [step["question"] for step in answer["decision_path"] if step["decides"]]


def test_path_asks_the_seed_questions_in_order():
    answer = advise()
    questions = [s["question"] for s in answer["decision_path"]]
    assert questions[:4] == [
        "Is the main constraint memory?",
        "Is quality critical and does LoRA show a gap?",
        "Is training speed the most important thing?",
        "None in particular?",
    ]
    assert questions[4] == "Does it fit the card?"
    assert all(s["evidence"] for s in answer["decision_path"])


def test_memory_priority_gives_qlora():
    answer = advise("memory")
    assert (answer["variant"], answer["combine_with"]) == ("qlora", [])
    assert decided_by(answer) == ["Is the main constraint memory?"]
    assert "QLoRA needs" in answer["decision_path"][0]["evidence"]


def test_quality_with_gap_gives_dora():
    answer = advise("quality", gap=True)
    assert answer["variant"] == "dora"
    assert answer["hyperparameters"]["lora_config"]["use_dora"] is True


def test_quality_without_gap_starts_simple_with_lora():
    answer = advise("quality", gap=False)
    assert answer["variant"] == "lora"
    assert "try DoRA when LoRA shows a gap" in answer["decision_path"][1]["evidence"]


def test_speed_gives_loraplus_with_ratio_16():
    answer = advise("speed")
    assert answer["variant"] == "loraplus"
    assert answer["hyperparameters"]["loraplus_lr_ratio"] == 16
    # A's rate below plain LoRA's (the LoRA+ authors: about half), B's 16x that
    assert (
        answer["hyperparameters"]["learning_rate"]
        == advise("none")["hyperparameters"]["learning_rate"] / 2
    )


def test_no_priority_gives_lora():
    answer = advise("none")
    assert (answer["variant"], answer["combine_with"]) == ("lora", [])
    assert answer["fits"] is True and answer["remedies"] == []


def test_memory_becomes_binding_for_speed_on_a_small_card():
    answer = advise("speed", memory=12.0)
    assert (answer["variant"], answer["combine_with"]) == ("qlora", ["loraplus"])
    assert answer["fits"] is True
    assert "memory became binding" in answer["decision_path"][-1]["evidence"]
    assert answer["hyperparameters"]["bnb_config"]["bnb_4bit_quant_type"] == "nf4"
    assert answer["hyperparameters"]["loraplus_lr_ratio"] == 16


def test_memory_becomes_binding_for_quality_on_a_small_card():
    answer = advise("quality", gap=True, memory=12.0)
    assert (answer["variant"], answer["combine_with"]) == ("qlora", ["dora"])
    assert answer["hyperparameters"]["lora_config"]["use_dora"] is True
    assert answer["hyperparameters"]["bnb_config"] is not None


def test_none_priority_falls_back_to_qlora_when_lora_does_not_fit():
    answer = advise("none", memory=12.0)
    assert (answer["variant"], answer["combine_with"]) == ("qlora", [])
    assert "memory became binding" in answer["decision_path"][-1]["evidence"]


def test_idea_dropped_when_only_plain_qlora_fits():
    base = advise("quality", gap=True, memory=80.0, training={"seq_len": 4096})
    qlora = base["estimates"]["qlora"]["total_gib"]
    # a card between plain QLoRA and QLoRA + DoRA
    from advisor.catalog.models import find_model
    from advisor.memory import estimate
    from advisor.profile import TrainingSettings
    from advisor.variants import combination

    arch = find_model(MODEL["name"]).architecture
    qdora = estimate(arch, TrainingSettings(seq_len=4096), combination("qlora", ["dora"])).total_gib
    assert qdora > qlora
    answer = advise("quality", gap=True, memory=(qlora + qdora) / 2, training={"seq_len": 4096})
    assert (answer["variant"], answer["combine_with"]) == ("qlora", [])
    assert "idea is dropped" in answer["decision_path"][-1]["evidence"]


def test_nothing_fits_gives_remedies_with_new_estimates():
    answer = advise(
        "none",
        memory=16.0,
        training={"seq_len": 8192, "micro_batch_size": 8, "gradient_checkpointing": False},
    )
    assert answer["fits"] is False
    assert answer["variant"] == "qlora"
    changes = [r["change"] for r in answer["remedies"]]
    assert any("gradient checkpointing" in c for c in changes)
    for remedy in answer["remedies"]:
        assert remedy["estimate"]["fits"] is True
        assert remedy["estimate"]["total_gib"] <= 16.0


def test_no_single_card_can_train_it():
    answer = advise("none", memory=8.0, model={"name": "meta-llama/Llama-2-70b-hf"})
    assert answer["fits"] is False
    assert answer["verdict"].startswith("no single card of this size can train this model")
    assert all("gpu_count" in r["settings"] for r in answer["remedies"])
    assert answer["remedies"], "more cards make it fit"


def test_all_four_estimates_whatever_is_recommended():
    answer = advise("speed")
    assert set(answer["estimates"]) == {"lora", "qlora", "dora", "loraplus"}
    for e in answer["estimates"].values():
        assert set(e["breakdown"]) == {
            "weights",
            "adapter",
            "gradients",
            "optimizer",
            "activations",
            "overhead",
        }
        assert e["total_gib"] > e["peak_allocated_gib"] > 0
        assert isinstance(e["fits"], bool)


def test_card_without_bf16_plans_fp16_and_says_so():
    answer = advise("none", gpu="t4", training={"seq_len": 512, "precision": "bf16"})
    assert answer["precision"] == "fp16"
    assert any("no bf16" in n for n in answer["notes"])
    assert answer["hyperparameters"]["precision"] == "fp16"


# A figure: a number with its unit. Source citations (arXiv ids, dates, "Llama 2") carry
# digits but no unit, so they cannot stand in for the figure.
FIGURE = re.compile(r"[+-]?\d[\d,]*(\.\d+)?\s?(%|x\b|GiB|GB|h\b|bits\b|pts\b)")
SOURCE = re.compile(
    r"arXiv:\d{4}\.\d{4,5}|github\.com/\S+|Ahead of AI|BENCHMARKS\.md|design document"
)


@pytest.fixture(params=["packaged evidence", "no evidence"])
def evidence_state(request, tmp_path, monkeypatch):
    """The advice with advisor/data/evidence.json as committed, and with no evidence file at
    all (an installed advisor whose file is gone): the notes must carry figures either way."""
    if request.param == "no evidence":
        absent = str(tmp_path / "absent.json")
        monkeypatch.setattr(evidence, "load", lambda p=None: evidence.read(absent))
    return request.param


@pytest.mark.parametrize("priority", ["none", "memory", "quality", "speed"])
def test_notes_carry_figures_and_sources(evidence_state, priority):
    notes = advise(priority, gap=True)["notes"]
    assert notes
    for note in notes:
        assert FIGURE.search(note), f"no figure in: {note}"
        assert SOURCE.search(note), f"no source in: {note}"
    text = " ".join(notes)
    for paper in ("arXiv:2305.14314", "arXiv:2402.09353", "arXiv:2402.12354"):
        assert paper in text
    # a claim of slower steps comes with how much slower, in the same clause
    slower = [n for n in notes if "slower" in n]
    assert len(slower) >= 2  # QLoRA's and DoRA's
    for note in slower:
        assert re.search(r"slower\b[^;]*?\d+(\.\d+)?\s?(h\b|%)", note), note
    measured = [n for n in notes if n.startswith("loracle measured")]
    assert bool(measured) == (evidence_state == "packaged evidence")


def test_qlora_step_time_measured_by_loracle_is_cited():
    data = evidence.read()
    assert data is not None
    step = data["qlora"]["step_time_pct"]
    notes = advise("memory")["notes"]
    qlora = next(n for n in notes if n.startswith("loracle measured") and "QLoRA's NF4" in n)
    assert f"steps took {step['mean']:+.0f}% ± {step['std']:.0f}% more CPU time" in qlora


def test_hardware_is_required():
    with pytest.raises(InvalidInput, match=r"hardware\.gpu_memory_gib"):
        recommend(Profile.model_validate({"model": MODEL}))


def test_problems_of_card_and_model_are_reported_together():
    with pytest.raises(InvalidInput) as info:
        recommend(
            Profile.model_validate({"hardware": {"gpu": "rtx-9999"}, "model": {"name": "nope-7b"}})
        )
    assert {p.field for p in info.value.problems} == {"hardware.gpu", "model.name"}
