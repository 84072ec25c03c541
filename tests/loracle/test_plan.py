from __future__ import annotations

import json

import pytest

from advisor.variants import IDEA_NAMES
from loracle.errors import PlanError
from loracle.plan import TrainingPlan, load_plan

BASE = {"model": "org/name", "train_file": "train.jsonl", "output_dir": "out"}


def test_defaults_and_alpha_follows_rank():
    plan = load_plan(BASE)
    assert plan.variant == "lora" and plan.combine_with == []
    assert plan.epochs == 1 and plan.max_steps is None
    assert plan.learning_rate == 2e-4 and plan.seq_len == 512
    assert plan.lora_rank == 16 and plan.lora_alpha == 32
    assert plan.precision == "auto" and plan.optimizer is None
    assert plan.lr_scheduler == "cosine" and plan.target_modules == "all-linear"
    assert load_plan({**BASE, "lora_rank": 4}).lora_alpha == 8
    assert load_plan({**BASE, "lora_rank": 4, "lora_alpha": 5}).lora_alpha == 5


@pytest.mark.parametrize(
    ("variant", "combine_with", "switches"),
    [
        ("lora", [], (False, False, False)),
        ("qlora", [], (True, False, False)),
        ("dora", [], (False, True, False)),
        ("loraplus", [], (False, False, True)),
        ("qlora", ["loraplus"], (True, False, True)),
        ("qlora", ["dora"], (True, True, False)),
        ("dora", ["qlora", "loraplus"], (True, True, True)),
    ],
)
def test_derived_switches(variant, combine_with, switches):
    plan = load_plan({**BASE, "variant": variant, "combine_with": combine_with})
    assert (plan.quantize_4bit, plan.use_dora, plan.use_loraplus) == switches
    assert set(plan.ideas) <= set(IDEA_NAMES)


def test_json_round_trip():
    plan = load_plan({**BASE, "variant": "qlora", "combine_with": ["dora"], "estimate": {"x": 1}})
    again = TrainingPlan.model_validate_json(plan.model_dump_json())
    assert again == plan


def test_every_field_is_documented():
    undocumented = [
        name for name, field in TrainingPlan.model_fields.items() if not field.description
    ]
    assert undocumented == []


@pytest.mark.parametrize(
    ("update", "field", "expected"),
    [
        ({"variant": "qlora", "combine_with": ["qlora"]}, "combine_with", "repeats the variant"),
        ({"variant": "qlora", "combine_with": ["dora", "dora"]}, "combine_with", "more than once"),
        ({"combine_with": ["dora"]}, "combine_with", "variant='dora'"),
        ({"variant": "full"}, "variant", "'lora', 'qlora', 'dora', 'loraplus' or 'rslora'"),
        ({"precision": "fp8"}, "precision", "'auto', 'bf16', 'fp16' or 'fp32'"),
        ({"optimizer": "adam"}, "optimizer", "'adamw'"),
        ({"target_modules": "all_linear"}, "target_modules", "use 'all-linear'"),
        ({"target_modules": []}, "target_modules", "name at least one module"),
        ({"learning_rate": 0}, "learning_rate", "greater than 0"),
        ({"warmup_ratio": 1.5}, "warmup_ratio", "less than 1"),
        ({"lora_rank": 0}, "lora_rank", "greater than or equal to 1"),
        ({"loraplus_lr_ratio": 0.5}, "loraplus_lr_ratio", "greater than or equal to 1"),
        ({"learning_rat": 1e-4}, "learning_rat", "unknown field"),
    ],
)
def test_errors_name_field_value_and_fix(update, field, expected):
    with pytest.raises(PlanError) as info:
        load_plan({**BASE, **update})
    (problem,) = info.value.problems
    assert problem.startswith(f"{field}:")
    assert expected in problem
    assert f"got {update[field]!r}" in problem


def test_all_problems_collected_at_once():
    with pytest.raises(PlanError) as info:
        load_plan(
            {
                "model": "org/name",
                "train_file": "t.jsonl",
                "variant": "qlora",
                "combine_with": ["qlora"],
                "seq_len": 0,
                "lr_scheduler": "exp",
            }
        )
    fields = sorted(p.split(":")[0] for p in info.value.problems)
    assert fields == ["combine_with", "lr_scheduler", "output_dir", "seq_len"]
    assert "4 problem(s)" in str(info.value)


def test_load_plan_reads_bare_plans_and_run_records(tmp_path):
    bare = tmp_path / "plan.json"
    bare.write_text(json.dumps({**BASE, "variant": "dora"}))
    assert load_plan(bare).variant == "dora"
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"command": "python -m worker ...", "plan": {**BASE}}))
    assert load_plan(record).model == "org/name"
    with pytest.raises(PlanError, match="does not exist"):
        load_plan(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(PlanError, match="not JSON"):
        load_plan(tmp_path / "broken.json")
