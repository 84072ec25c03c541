from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advisor.catalog.gpus import GPUS
from advisor.catalog.models import models
from advisor.serving import SERVER_NAMES
from advisor.variants import IDEA_NAMES, VARIANT_NAMES
from tests.utils.api import client_for, settings_for

PROFILE = {
    "hardware": {"gpu": "rtx-4090", "gpu_memory_gib": None, "gpu_count": 1},
    "model": {"name": "meta-llama/Llama-2-7b-hf"},
    "training": {
        "seq_len": 2048,
        "micro_batch_size": 1,
        "gradient_checkpointing": True,
        "lora_rank": 16,
        "target_modules": "all-linear",
        "optimizer": "adamw",
        "precision": "bf16",
    },
    "goal": {"priority": "speed", "lora_quality_gap": False},
}


# Qwen2.5-0.5B's shape (GQA, tied embeddings).
QWEN_CONFIG = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
}


def test_recommendation_answers_the_contract(client):
    r = client.post("/v1/recommendations", json=PROFILE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["variant"] == "loraplus"
    assert isinstance(body["fits"], bool) and isinstance(body["headroom_gib"], float)
    assert set(body["estimates"]) == set(VARIANT_NAMES)
    for e in body["estimates"].values():
        assert {"peak_allocated_gib", "total_gib", "fits", "breakdown"} <= set(e)
    lc = body["hyperparameters"]["lora_config"]
    assert {"r", "lora_alpha", "lora_dropout", "target_modules", "use_dora"} <= set(lc)
    assert body["hyperparameters"]["loraplus_lr_ratio"] == 16
    assert body["decision_path"][2]["decides"] == "loraplus"


def test_model_config_is_accepted(client):
    cfg = QWEN_CONFIG
    r = client.post(
        "/v1/recommendations",
        json={"hardware": {"gpu": "t4"}, "model": {"config": cfg}, "goal": {"priority": "memory"}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["model"]["total_params"] == 494032768  # Qwen2.5-0.5B's published count


@pytest.mark.parametrize(
    "patch,field,fix",
    [
        ({"hardware": {"gpu_memory_gib": -8}}, "hardware.gpu_memory_gib", "greater than 0"),
        ({"training": {"seq_len": 0}}, "training.seq_len", "greater than or equal to 1"),
        ({"training": {"lora_rank": 0}}, "training.lora_rank", "greater than or equal to 1"),
        ({"training": {"optimizer": "adam"}}, "training.optimizer", "'adamw'"),
        ({"training": {"precision": "int8"}}, "training.precision", "'bf16'"),
        ({"goal": {"priority": "cost"}}, "goal.priority", "'memory'"),
        ({"goal": {"serve_with": "tgi"}}, "goal.serve_with", "'vllm'"),
        ({"hardware": {"gpu": "rtx 4O90"}}, "hardware.gpu", "rtx-4090"),
        ({"model": {"name": "llama-2-7"}}, "model.name", "meta-llama/Llama-2-7b-hf"),
        ({"model": {"config": {"hidden_size": 64}}}, "model.config.num_hidden_layers", "needs"),
        (
            {"model": {"config": {k: v for k, v in QWEN_CONFIG.items() if k != "hidden_size"}}},
            "model.config.hidden_size",
            "needs 'hidden_size'",
        ),
        ({"model": {}}, "model", "exactly one of"),
        ({"training": {"target_modules": ["query"]}}, "training.target_modules", "q_proj"),
        ({"training": {"seq_lenn": 5}}, "training.seq_lenn", "remove it"),
    ],
)
def test_bad_values_get_422_naming_field_and_fix(client, patch, field, fix):
    body = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PROFILE.items()}
    for key, value in patch.items():
        body[key] = {**body[key], **value} if key != "model" else value
    r = client.post("/v1/recommendations", json=body)
    assert r.status_code == 422, r.text
    err = r.json()
    assert set(err) == {"error", "detail", "problems"}
    hits = [p for p in err["problems"] if p["field"] == field]
    assert hits, err
    assert fix in hits[0]["message"], hits[0]["message"]


def test_serve_with_is_answered_and_a_bad_one_lists_the_values(client):
    body = {**PROFILE, "goal": {"priority": "quality", "lora_quality_gap": True}}
    r = client.post(
        "/v1/recommendations", json={**body, "goal": {**body["goal"], "serve_with": "vllm"}}
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["variant"] == "dora"
    last = answer["decision_path"][-1]
    assert (
        last["question"] == "Does vLLM load the DoRA adapter as it is?" and last["answer"] == "no"
    )
    assert any("vllm-project/vllm/issues/10849" in n["source"] for n in answer["notes"])
    # unset and null are the same question, with the same answer as before the field
    unset = client.post("/v1/recommendations", json=body).json()
    null = client.post(
        "/v1/recommendations", json={**body, "goal": {**body["goal"], "serve_with": None}}
    ).json()
    assert unset == null and unset["variant"] == "dora"
    assert unset["decision_path"][-1]["question"] == "Does it fit the card?"
    r = client.post("/v1/recommendations", json={**body, "goal": {"serve_with": "vLLM 0.9"}})
    assert r.status_code == 422, r.text
    (problem,) = r.json()["problems"]
    assert problem["field"] == "goal.serve_with" and problem["value"] == "vLLM 0.9"
    for name in ("transformers", "vllm", "sglang", "merged", "llama.cpp"):
        assert f"'{name}'" in problem["message"], problem["message"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Goal"]
    field = schema["properties"]["serve_with"]
    listed = next(branch["enum"] for branch in field["anyOf"] if "enum" in branch)
    assert listed == ["transformers", "vllm", "sglang", "merged", "llama.cpp"]
    assert "vllm" in field["description"]


def test_invalid_json_and_wrong_types_are_422(client):
    r = client.post(
        "/v1/recommendations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "body"
    r = client.post("/v1/recommendations", json=[1, 2])
    assert r.status_code == 422


def test_estimates_endpoint(client):
    r = client.post(
        "/v1/estimates",
        json={
            "model": {"name": "Qwen/Qwen2.5-7B"},
            "variant": "qlora",
            "combine_with": ["dora"],
            "hardware": {"gpu": "a10g"},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["variant"] == "qlora" and body["combine_with"] == ["dora"]
    assert body["method"] == "analytic" and isinstance(body["fits"], bool)
    r = client.post(
        "/v1/estimates",
        json={"model": {"name": "Qwen/Qwen2.5-7B"}, "variant": "qlora", "combine_with": ["qlora"]},
    )
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "combine_with"
    r = client.post("/v1/estimates", json={"model": {"name": "Qwen/Qwen2.5-7B"}})
    assert r.status_code == 200 and r.json()["fits"] is None


def test_catalogs_and_health(client):
    gpus = client.get("/v1/catalog/gpus").json()["data"]
    assert len(gpus) == len(GPUS) >= 20
    cat = client.get("/v1/catalog/models").json()["data"]
    assert len(cat) == len(models())
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_health_and_the_api_documentation_need_no_key_and_nothing_else_is_open(api_settings):
    with client_for(api_settings, key=None) as anonymous:
        for path in ("/healthz", "/docs", "/redoc", "/openapi.json"):
            assert anonymous.get(path).status_code == 200, path
        assert anonymous.get("/v1/catalog/gpus").status_code == 401
        assert anonymous.post("/v1/recommendations", json={}).status_code == 401


def test_unknown_route_is_404_in_the_error_shape(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


LLAMA = '"model": {"name": "meta-llama/Llama-2-7b-hf"}'
QWEN = '"model": {"config": ' + json.dumps(QWEN_CONFIG)[:-1] + ', "rope_theta": NaN}}'


def _post_raw(client, endpoint, text):
    return client.post(
        f"/v1/{endpoint}", content=text.encode(), headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize("endpoint", ["recommendations", "estimates"])
@pytest.mark.parametrize(
    "text,field,fix",
    [
        (
            '{"hardware": {"gpu_memory_gib": NaN}, ' + LLAMA + "}",
            "hardware.gpu_memory_gib",
            "no NaN or Infinity",
        ),
        (
            '{"hardware": {"gpu_memory_gib": Infinity}, ' + LLAMA + "}",
            "hardware.gpu_memory_gib",
            "no NaN or Infinity",
        ),
        (
            '{"hardware": {"gpu": "t4"}, ' + LLAMA + ', "training": {"seq_len": -Infinity}}',
            "training.seq_len",
            "JSON integer",
        ),
        (
            '{"hardware": {"gpu": "t4"}, ' + QWEN + "}",
            "model.config",
            "NaN or Infinity at rope_theta",
        ),
    ],
)
def test_nan_and_infinity_are_422_naming_the_field(client, endpoint, text, field, fix):
    r = _post_raw(client, endpoint, text)
    assert r.status_code == 422, r.text
    err = _strict_json(r)  # the offending value is reported, as a string
    hits = [p for p in err["problems"] if p["field"] == field]
    assert hits, err
    assert fix in hits[0]["message"], hits[0]["message"]
    assert isinstance(hits[0]["value"], str | dict)


@pytest.mark.parametrize("endpoint", ["recommendations", "estimates"])
@pytest.mark.parametrize(
    "key,value,fix",
    [
        ("max_position_embeddings", "a", "positive integer"),
        ("num_hidden_layers", 10**400, "above the 16,384"),
        ("vocab_size", 10**400, "above the 16,777,216"),
        ("tie_word_embeddings", "yes", "true or false"),
        ("attention_bias", 1, "true or false"),
        ("final_logit_softcapping", "high", "positive number"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_bad_model_config_values_are_422_naming_the_field(client, endpoint, key, value, fix):
    body = {"hardware": {"gpu": "t4"}, "model": {"config": {**QWEN_CONFIG, key: value}}}
    r = client.post(f"/v1/{endpoint}", json=body)
    assert r.status_code == 422, r.text
    (problem,) = _strict_json(r)["problems"]
    assert problem["field"] == f"model.config.{key}"
    assert fix in problem["message"]


@pytest.mark.parametrize(
    "endpoint,section,key,value,fix",
    [
        ("recommendations", "training", "seq_len", True, "JSON integer"),
        ("estimates", "training", "seq_len", True, "JSON integer"),
        ("recommendations", "training", "lora_rank", "16", "JSON integer"),
        ("estimates", "training", "micro_batch_size", 2.0, "JSON integer"),
        ("recommendations", "hardware", "gpu_count", 2.5, "JSON integer"),
        ("recommendations", "training", "gradient_checkpointing", "yes", "true or false"),
        ("estimates", "training", "gradient_checkpointing", 1, "true or false"),
        ("recommendations", "goal", "lora_quality_gap", "true", "true or false"),
        ("recommendations", "hardware", "gpu_memory_gib", "24", "JSON number"),
    ],
)
def test_wrong_json_types_are_not_coerced(client, endpoint, section, key, value, fix):
    body = {"hardware": {"gpu": "t4"}, "model": {"name": "meta-llama/Llama-2-7b-hf"}}
    body[section] = {**body.get(section, {}), key: value}
    r = client.post(f"/v1/{endpoint}", json=body)
    assert r.status_code == 422, r.text
    (problem,) = r.json()["problems"]
    assert problem["field"] == f"{section}.{key}"
    assert fix in problem["message"] and f"(got {value!r})" in problem["message"]


def test_a_config_json_as_the_hub_writes_it_is_accepted(client):
    """Real config.json files hold JSON booleans, nulls, floats and keys the advisor does
    not read: strictness must not refuse any of them."""
    cfg = {
        **QWEN_CONFIG,
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "_name_or_path": "Qwen/Qwen2.5-0.5B",
    }
    for endpoint in ("recommendations", "estimates"):
        r = client.post(
            f"/v1/{endpoint}", json={"hardware": {"gpu": "t4"}, "model": {"config": cfg}}
        )
        assert r.status_code == 200, r.text
        assert r.json()["model"]["name"] == "Qwen/Qwen2.5-0.5B"
        assert r.json()["model"]["total_params"] == 494032768


_app_client = client_for(settings_for(Path(tempfile.mkdtemp(prefix="loracle-advice-"))))

# -- properties: every valid request is answered, no request gets a 5xx --------------------

FAMILY_TARGETS = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["o_proj"],
    "qwen2": ["k_proj", "down_proj"],
    "gemma2": ["gate_proj", "up_proj"],
    "phi3": ["qkv_proj", "gate_up_proj"],
}


@st.composite
def hf_configs(draw):
    """A causal-LM config.json of one of the families the advisor models, with random but
    valid sizes, written as the Hub writes them (JSON booleans, nulls, extra keys)."""
    family = draw(st.sampled_from(sorted(FAMILY_TARGETS)))
    kv = draw(st.integers(1, 16))
    heads = kv * draw(st.integers(1, 8))
    head_dim = draw(st.sampled_from([16, 32, 64, 80, 96, 128, 256]))
    cfg = {
        "model_type": family,
        "architectures": [f"{family.capitalize()}ForCausalLM"],
        "hidden_size": heads * head_dim,
        "intermediate_size": draw(st.integers(8, 65536)),
        "num_hidden_layers": draw(st.integers(1, 128)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": draw(st.integers(1, 262144)),
        "rms_norm_eps": 1e-6,
        "rope_theta": draw(st.sampled_from([10000.0, 500000.0, 1000000])),
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }
    if family == "gemma2":
        # Gemma-2's head_dim is its own (256 with hidden_size 2304), and it soft-caps
        cfg["head_dim"] = draw(st.sampled_from([128, 256]))
        cfg["attn_logit_softcapping"] = 50.0
        cfg["final_logit_softcapping"] = 30.0
    optional = {
        "tie_word_embeddings": st.one_of(st.booleans(), st.none()),
        "max_position_embeddings": st.integers(128, 131072),
        "attention_bias": st.booleans(),
        "mlp_bias": st.just(False),
        "rope_scaling": st.one_of(st.none(), st.just({"type": "linear", "factor": 2.0})),
        "_name_or_path": st.text(min_size=1, max_size=30),
    }
    if family != "gemma2":
        optional["head_dim"] = st.just(head_dim)
    for key, values in optional.items():
        if key not in cfg and draw(st.booleans()):
            cfg[key] = draw(values)
    return cfg


models_ = st.one_of(
    st.fixed_dictionaries({"name": st.sampled_from([m.id for m in models()])}),
    st.fixed_dictionaries({"config": hf_configs()}),
)


def _targets(model):
    family = model["config"]["model_type"] if "config" in model else None
    names = FAMILY_TARGETS[family] if family else ["o_proj", "down_proj"]
    return st.one_of(
        st.just("all-linear"),
        st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True),
    )


hardware_ = st.one_of(
    st.fixed_dictionaries(
        {"gpu": st.sampled_from([g.id for g in GPUS]), "gpu_count": st.integers(1, 8)}
    ),
    st.fixed_dictionaries(
        {"gpu_memory_gib": st.floats(0.5, 400)}, optional={"gpu_count": st.integers(1, 64)}
    ),
)


def _training(model):
    return st.fixed_dictionaries(
        {},
        optional={
            "seq_len": st.integers(1, 200_000),
            "micro_batch_size": st.integers(1, 64),
            "gradient_accumulation_steps": st.integers(1, 64),
            "gradient_checkpointing": st.booleans(),
            "lora_rank": st.integers(1, 1024),
            "target_modules": _targets(model),
            "optimizer": st.sampled_from(["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd"]),
            "precision": st.sampled_from(["bf16", "fp16", "fp32"]),
        },
    )


@st.composite
def profiles(draw):
    model = draw(models_)
    return {
        "hardware": draw(hardware_),
        "model": model,
        "training": draw(_training(model)),
        "goal": draw(
            st.fixed_dictionaries(
                {
                    "priority": st.sampled_from(["memory", "quality", "speed", "none"]),
                    "lora_quality_gap": st.booleans(),
                },
                optional={"serve_with": st.sampled_from([None, *SERVER_NAMES])},
            )
        ),
    }


@st.composite
def estimate_requests(draw):
    model = draw(models_)
    variant = draw(st.sampled_from(VARIANT_NAMES))
    # plain LoRA takes no further ideas: LoRA plus an idea is that idea's variant
    others = [v for v in IDEA_NAMES if v != variant] if variant != "lora" else []
    body = {
        "model": model,
        "training": draw(_training(model)),
        "variant": variant,
        "combine_with": draw(st.lists(st.sampled_from(others), unique=True)) if others else [],
    }
    if draw(st.booleans()):
        body["hardware"] = draw(hardware_)
    return body


def _strict_json(response):
    """The answer parsed as strict JSON: NaN or Infinity in it is a failure."""

    def refuse(token):
        raise AssertionError(f"{token} in the answer: {response.text[:300]}")

    return json.loads(response.text, parse_constant=refuse)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(
        profiles().map(lambda b: ("recommendations", b)),
        estimate_requests().map(lambda b: ("estimates", b)),
    )
)
def test_every_valid_request_is_answered(body):
    endpoint, request = body
    r = _app_client.post(f"/v1/{endpoint}", json=request)
    assert r.status_code == 200, r.text
    answer = _strict_json(r)
    if endpoint == "recommendations":
        assert answer["variant"] in VARIANT_NAMES
        card = answer["hardware"]["memory_gib"]

        def required(e):  # "fits" asks for the total and the fit margin on it
            return e["total_gib"] * (1 + e["margin"])

        # figures are rounded to 3 decimals: compare with that tolerance
        need = required(answer["estimate"])
        assert (need <= card + 5e-4) if answer["fits"] else (need >= card - 5e-4)
        for remedy in answer["remedies"]:
            assert required(remedy["estimate"]) <= card + 5e-4
        if (
            request["goal"].get("serve_with") == "vllm"
            and answer["decision_path"][-1]["answer"] == "yes"
        ):  # served as an adapter: within vLLM's largest --max-lora-rank
            assert answer["hyperparameters"]["lora_config"]["r"] <= 512
    else:
        assert answer["variant"] == request["variant"]
        assert answer["total_gib"] > answer["peak_allocated_gib"] >= 0
        assert (answer["fits"] is None) == ("hardware" not in request)


# Junk: any JSON value, including what JSON itself forbids but parsers accept (NaN,
# Infinity), integers beyond any machine word, and deep or odd containers.
junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**30), 2**63, 0, -1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

VALID_RECOMMENDATION = {
    "hardware": {"gpu": "rtx-4090", "gpu_count": 1},
    "model": {"config": QWEN_CONFIG},
    "training": {"seq_len": 1024, "micro_batch_size": 2, "target_modules": ["q_proj"]},
    "goal": {"priority": "quality", "lora_quality_gap": True},
}
VALID_ESTIMATE = {
    "model": VALID_RECOMMENDATION["model"],
    "training": VALID_RECOMMENDATION["training"],
    "variant": "qlora",
    "combine_with": ["dora"],
    "hardware": {"gpu_memory_gib": 12.5},
}


def _paths(value, prefix=()):
    """Every place in a body a value can be put: each existing key and item, and a new key
    in each object."""
    yield prefix
    if isinstance(value, dict):
        yield (*prefix, "unexpected_key")
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*prefix, i))


def _put(body, path, value):
    if not path:
        return value
    body = copy.deepcopy(body)
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return body


JUNK_TARGETS = [
    (endpoint, base, path)
    for endpoint, base in (("recommendations", VALID_RECOMMENDATION), ("estimates", VALID_ESTIMATE))
    for path in _paths(base)
]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.sampled_from(JUNK_TARGETS), value=junk)
def test_junk_anywhere_never_gets_a_5xx(target, value):
    endpoint, base, path = target
    # allow_nan: send NaN and Infinity as the bare tokens a careless client writes
    text = json.dumps(_put(base, path, value), allow_nan=True)
    r = _app_client.post(
        f"/v1/{endpoint}", content=text.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code in (200, 422), r.text
    answer = _strict_json(r)
    if r.status_code == 422:
        assert set(answer) == {"error", "detail", "problems"}
        assert answer["problems"] and all(p["field"] and p["message"] for p in answer["problems"])


def test_the_answer_cache_is_bounded_by_bytes_and_drops_the_least_recent():
    from api.advice.service import AnswerCache

    cache = AnswerCache(max_bytes=1000)
    computed: list[bytes] = []

    def answer(n: int):
        def compute() -> bytes:
            computed.append(b"%d" % n)
            return bytes([n]) * 300

        return compute

    for n in range(3):
        cache.get(b"request %d" % n, answer(n))
    assert cache.get(b"request 0", answer(0)) == bytes([0]) * 300  # a hit: not recomputed
    cache.get(b"request 3", answer(3))  # 1200 bytes: the least recent (request 1) goes
    assert (len(cache), cache.bytes) == (3, 900)
    cache.get(b"request 1", answer(1))
    assert computed == [b"0", b"1", b"2", b"3", b"1"]


def test_large_requests_cost_the_cache_their_answer_not_their_size(client):
    """model.config accepts any keys, so a body can be up to the body limit; the cache of
    answers keyed by the body keeps a digest of it, never the body."""
    from api.advice import service

    before = service._bodies.bytes
    sizes = []
    for n in range(3):
        config = {**QWEN_CONFIG, "padding": "x" * 200_000, "n": n}
        body = {**PROFILE, "model": {"config": config}}
        r = client.post("/v1/recommendations", json=body)
        assert r.status_code == 200, r.text
        sizes.append(len(r.content))
    assert service._bodies.bytes - before == sum(sizes) < 100_000
