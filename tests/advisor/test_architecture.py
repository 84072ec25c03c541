from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from advisor.architecture import LIMITS, from_hf_config
from advisor.catalog.models import find_model, models
from advisor.errors import InvalidInput
from advisor.memory import estimate
from advisor.profile import TrainingSettings
from advisor.variants import Combination


@pytest.mark.parametrize("entry", models(), ids=lambda m: m.id)
def test_catalog_reproduces_published_parameter_counts(entry):
    arch = entry.architecture
    if entry.published_total_params is not None:
        assert arch.total_params == entry.published_total_params
    if entry.published_block_linear_params is not None:
        assert arch.block_linear_weight_params == entry.published_block_linear_params


SHAPES = Path(__file__).parent / "data" / "model-shapes.csv"


def reference_shapes() -> list[dict[str, str]]:
    """tests/advisor/data/model-shapes.csv: the project's copy of the published reference
    shapes (config.json figures and parameter counts of popular models)."""
    lines = SHAPES.read_text().splitlines()
    return list(csv.DictReader(line for line in lines if not line.startswith("#")))


def test_reference_shapes_file_is_complete():
    rows = reference_shapes()
    data_lines = [line for line in SHAPES.read_text().splitlines() if line and line[0] != "#"]
    assert len(rows) == len(data_lines) - 1 >= 18  # every line but the header is a model
    assert len({r["model"] for r in rows}) == len(rows)


@pytest.mark.parametrize("row", reference_shapes(), ids=lambda r: r["model"])
def test_catalog_matches_every_reference_shape(row):
    entry = find_model(row["model"])
    assert entry.id == row["model"]
    arch = entry.architecture
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
    ):
        assert getattr(arch, key) == int(row[key]), key
    assert arch.tie_word_embeddings == {"true": True, "false": False}[row["tie_word_embeddings"]]
    assert arch.total_params == int(row["total_params"])
    assert arch.block_linear_weight_params == int(row["block_linear_params"])


def llama_config(**overrides):
    cfg = {
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
        "tie_word_embeddings": False,
    }
    cfg.update(overrides)
    return cfg


def test_gqa_shrinks_k_and_v():
    arch = from_hf_config(llama_config())
    sizes = {lin.name: (lin.in_features, lin.out_features) for lin in arch.block_linears()}
    assert sizes["q_proj"] == (256, 256)
    assert sizes["k_proj"] == (256, 64)
    assert sizes["v_proj"] == (256, 64)


def test_tied_embeddings_count_once():
    untied = from_hf_config(llama_config())
    tied = from_hf_config(llama_config(tie_word_embeddings=True))
    assert untied.total_params - tied.total_params == 1000 * 256


def test_qwen2_has_qkv_biases_and_phi3_is_fused():
    qwen = from_hf_config(llama_config(model_type="qwen2"))
    assert [lin.bias for lin in qwen.block_linears()[:4]] == [True, True, True, False]
    phi = from_hf_config(llama_config(model_type="phi3"))
    assert phi.linear_names == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    llama = from_hf_config(llama_config())
    assert phi.block_linear_weight_params == llama.block_linear_weight_params


def test_gemma2_head_dim_and_four_norms():
    arch = from_hf_config(llama_config(model_type="gemma2", head_dim=64))
    assert arch.q_dim == 8 * 64
    assert arch.norms_per_layer == 4
    assert arch.tie_word_embeddings is False  # stated in the config, wins over the default


def test_text_config_of_multimodal_wrappers_is_read():
    arch = from_hf_config({"model_type": "gemma3", "text_config": llama_config()})
    assert arch.hidden_size == 256


def test_missing_fields_are_all_reported_with_the_fix():
    with pytest.raises(InvalidInput) as info:
        from_hf_config({"model_type": "llama", "hidden_size": 64})
    fields = {p.field for p in info.value.problems}
    assert fields == {
        "model.config.intermediate_size",
        "model.config.num_hidden_layers",
        "model.config.num_attention_heads",
        "model.config.vocab_size",
    }
    assert all("needs" in p.message for p in info.value.problems)


def test_bad_values_and_gqa_mismatch():
    with pytest.raises(InvalidInput) as info:
        from_hf_config(llama_config(hidden_size=-4, num_key_value_heads=3))
    messages = {p.field: p.message for p in info.value.problems}
    assert "positive integer" in messages["model.config.hidden_size"]
    assert "multiple of num_key_value_heads" in messages["model.config.num_key_value_heads"]


def test_mixture_of_experts_is_refused():
    with pytest.raises(InvalidInput, match="mixture-of-experts"):
        from_hf_config(llama_config(model_type="mixtral", num_local_experts=8))


def test_unknown_family_is_read_as_llama_like_and_says_so():
    arch = from_hf_config(llama_config(model_type="mystery"))
    assert any("Llama-style" in n for n in arch.notes)


def test_lora_and_dora_parameter_counts():
    arch = find_model("meta-llama/Llama-2-7b-hf").architecture
    # r=8 on q and v: 32 layers x 2 modules x 8 x (4096 + 4096)
    assert arch.lora_params(8, ["q_proj", "v_proj"]) == 32 * 2 * 8 * 8192
    # DoRA adds one magnitude per output feature of each adapted layer
    assert arch.lora_params(8, ["q_proj", "v_proj"], dora=True) == 32 * 2 * (8 * 8192 + 4096)


def test_unknown_target_module_names_the_known_ones():
    arch = find_model("meta-llama/Llama-2-7b-hf").architecture
    with pytest.raises(InvalidInput, match="q_proj"):
        arch.lora_params(8, ["query"])


@pytest.mark.parametrize(
    "key,value,fix",
    [
        ("max_position_embeddings", "a", "positive integer"),
        ("max_position_embeddings", 4096.5, "positive integer"),
        ("max_position_embeddings", True, "positive integer"),
        ("num_hidden_layers", 10**400, "above the 16,384"),
        ("vocab_size", 10**400, "above the 16,777,216"),
        ("hidden_size", 10**5000, "an integer of about 5001 digits"),
        ("head_dim", 0, "positive integer"),
        ("num_key_value_heads", "2", "positive integer"),
        ("tie_word_embeddings", "yes", "true or false"),
        ("tie_word_embeddings", 1, "true or false"),
        ("attention_bias", "false", "true or false"),
        ("mlp_bias", [], "true or false"),
        ("attn_logit_softcapping", "x", "positive number"),
        ("final_logit_softcapping", -30.0, "positive number"),
        ("final_logit_softcapping", math.inf, "positive number"),
        ("model_type", 7, "must be a string"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_bad_config_values_name_the_field_and_the_fix(key, value, fix):
    with pytest.raises(InvalidInput) as info:
        from_hf_config(llama_config(**{key: value}))
    (problem,) = info.value.problems
    assert problem.field == f"model.config.{key}"
    assert fix in problem.message
    assert len(problem.message) < 300  # a huge value is described, not printed


def test_real_config_json_values_are_accepted():
    """What Hugging Face config.json files really hold: JSON booleans, nulls for unset
    options, floats for soft-capping, extra keys of every type."""
    arch = from_hf_config(
        llama_config(
            model_type="gemma2",
            head_dim=None,
            tie_word_embeddings=None,  # null: the family's default (tied)
            attention_bias=False,
            mlp_bias=None,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30,
            max_position_embeddings=8192,
            rope_scaling={"factor": 8.0, "rope_type": "llama3"},
            rope_theta=10000.0,
            architectures=["Gemma2ForCausalLM"],
            torch_dtype="bfloat16",
            use_cache=True,
        )
    )
    assert arch.tie_word_embeddings is True and arch.head_dim == 256 // 8
    assert (arch.attn_logit_softcapping, arch.final_logit_softcapping) == (50.0, 30.0)
    assert arch.max_position_embeddings == 8192


def test_largest_accepted_sizes_give_a_finite_estimate():
    """The limits are there so the arithmetic cannot overflow: at every limit at once the
    memory model still answers with finite numbers."""
    cfg = {key: LIMITS[key] for key in LIMITS if key not in ("head_dim",)}
    cfg["num_key_value_heads"] = cfg["num_attention_heads"]
    arch = from_hf_config({"model_type": "gemma2", **cfg, "head_dim": LIMITS["head_dim"]})
    training = TrainingSettings(seq_len=1_048_576, micro_batch_size=4096, lora_rank=4096)
    for combo in (Combination("lora"), Combination("qlora", ("dora",))):
        e = estimate(arch, training, combo)
        assert math.isfinite(e.total_bytes) and e.total_bytes > 0
