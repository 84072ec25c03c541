"""goal.serve_with: the serving table (advisor/serving.py) and what it does to the advice."""

from __future__ import annotations

from typing import get_args

import pytest

from advisor.catalog.models import models
from advisor.decide import QUESTIONS, recommend
from advisor.profile import Goal, Profile
from advisor.serving import SERVER_NAMES, SERVERS
from advisor.variants import IDEA_NAMES, VARIANTS

MODEL = {"name": "meta-llama/Llama-2-7b-hf"}
QUALITY_QUESTION = next(q.text for q in QUESTIONS if q.decides == "dora")


def advise(goal, training=None, hardware=None, model=MODEL):
    return recommend(
        Profile.model_validate(
            {
                "hardware": hardware or {"gpu_memory_gib": 80.0},
                "model": model,
                "training": training or {"seq_len": 512},
                "goal": goal,
            }
        )
    ).model_dump(mode="json")


def step(answer, question):
    return next(s for s in answer["decision_path"] if s["question"] == question)


def note_texts(answer):
    return " ".join(n["text"] for n in answer["notes"])


def test_every_server_answers_for_every_idea_of_the_registry_with_a_source():
    literal, none = get_args(Goal.model_fields["serve_with"].annotation)
    assert get_args(literal) == SERVER_NAMES and none is type(None)
    assert SERVER_NAMES == ("transformers", "vllm", "sglang", "merged", "llama.cpp")
    for server in SERVERS.values():
        assert set(server.ideas) == set(IDEA_NAMES) <= set(VARIANTS)
        assert server.source
        for name, idea in server.ideas.items():
            assert idea.text and idea.source, (server.name, name)
        # a server that loads any idea only merged says how to merge
        if not all(i.loads for i in server.ideas.values()):
            assert "merge_and_unload" in server.merge


def test_what_the_table_says_of_each_server():
    loads = {n: {i: s.loads for i, s in server.ideas.items()} for n, server in SERVERS.items()}
    # peft loads and merges everything; LoRA+ is training only everywhere
    assert all(loads["transformers"].values()) and all(loads["merged"].values())
    assert all(loads[s]["loraplus"] for s in SERVER_NAMES)
    # DoRA: refused by vLLM (vllm#10849), SGLang and llama.cpp's converter
    assert [s for s in SERVER_NAMES if not loads[s]["dora"]] == ["vllm", "sglang", "llama.cpp"]
    # rsLoRA: vLLM applies alpha/sqrt(r); SGLang and llama.cpp scale by alpha/r
    assert [s for s in SERVER_NAMES if not loads[s]["rslora"]] == ["sglang", "llama.cpp"]
    assert SERVERS["vllm"].max_lora_ranks == (1, 8, 16, 32, 64, 128, 256, 320, 512)
    assert SERVERS["vllm"].rank_limit(16) == 16 and SERVERS["vllm"].rank_limit(48) == 64
    assert SERVERS["vllm"].rank_limit(513) is None
    assert SERVERS["sglang"].rank_limit(4096) is None and SERVERS["sglang"].largest_rank is None


def test_quality_with_a_gap_keeps_dora_under_vllm_with_a_merge_note():
    answer = advise({"priority": "quality", "lora_quality_gap": True, "serve_with": "vllm"})
    assert (answer["variant"], answer["combine_with"]) == ("dora", [])
    quality = step(answer, QUALITY_QUESTION)
    assert quality["decides"] == "dora" and "vllm-project/vllm/issues/10849" in quality["evidence"]
    last = answer["decision_path"][-1]
    assert last["question"] == "Does vLLM load the DoRA adapter as it is?"
    assert last["answer"] == "no" and "DoRA stays, as the goal asked for it" in last["evidence"]
    assert "merge DoRA before serving" in last["evidence"]
    texts = note_texts(answer)
    assert "merge a DoRA adapter before serving with vLLM" in texts
    assert "merge_and_unload()" in texts and "--max-lora-rank" not in texts


def test_quality_without_a_gap_under_vllm_is_lora_and_the_path_says_why_not_dora():
    # The tree picks DoRA only when quality is critical and LoRA shows a gap; quality that is
    # not yet critical starts with LoRA, and under vLLM the path says DoRA would also cost a
    # merge before serving.
    answer = advise({"priority": "quality", "lora_quality_gap": False, "serve_with": "vllm"})
    assert (answer["variant"], answer["combine_with"]) == ("lora", [])
    quality = step(answer, QUALITY_QUESTION)
    assert quality["answer"] == "no"
    assert "vLLM refuses DoRA adapters" in quality["evidence"]
    assert "merge a DoRA adapter before serving with vLLM" in quality["evidence"]
    last = answer["decision_path"][-1]
    assert last["answer"] == "yes" and "--max-lora-rank 16" in last["evidence"]
    # without serve_with the same goal's path says nothing of vLLM
    plain = advise({"priority": "quality", "lora_quality_gap": False})
    assert "vLLM" not in step(plain, QUALITY_QUESTION)["evidence"]


def test_a_priority_other_than_quality_says_nothing_of_dora():
    answer = advise({"priority": "speed", "serve_with": "vllm"})
    assert answer["variant"] == "loraplus"
    assert "DoRA" not in step(answer, QUALITY_QUESTION)["evidence"]
    assert "LoRA+ changes only training" in note_texts(answer)


@pytest.mark.parametrize(("rank", "flag"), [(8, 8), (16, 16), (48, 64), (320, 320), (512, 512)])
def test_vllm_notes_name_the_max_lora_rank_to_start_it_with(rank, flag):
    answer = advise({"serve_with": "vllm"}, training={"seq_len": 512, "lora_rank": rank})
    r = answer["hyperparameters"]["lora_config"]["r"]
    assert r == rank and r <= flag
    assert f"--max-lora-rank {flag} " in answer["decision_path"][-1]["evidence"]
    assert f"--max-lora-rank {flag} " in note_texts(answer)


def test_a_rank_above_vllms_largest_is_lowered_to_it_everywhere():
    answer = advise({"serve_with": "vllm"}, training={"seq_len": 512, "lora_rank": 1024})
    largest = SERVERS["vllm"].largest_rank
    assert answer["hyperparameters"]["lora_config"]["r"] == largest == 512
    lowered = step(answer, "Does vLLM load an adapter of rank 1024?")
    assert lowered["answer"] == "no" and "trains rank 512" in lowered["evidence"]
    assert "--max-lora-rank 512 " in note_texts(answer)
    # the estimates are of the rank trained: the same as asking for rank 512
    asked = advise({}, training={"seq_len": 512, "lora_rank": 512})
    assert answer["estimate"] == asked["estimate"] and answer["estimates"] == asked["estimates"]
    # rsLoRA (suggested from rank 64) is served by vLLM as trained
    assert answer["variant"] == "rslora"


def test_a_merged_pick_is_not_held_to_vllms_rank_limit():
    goal = {"priority": "quality", "lora_quality_gap": True, "serve_with": "vllm"}
    answer = advise(goal, training={"seq_len": 512, "lora_rank": 1024})
    assert answer["hyperparameters"]["lora_config"]["r"] == 1024
    assert answer["variant"] == "dora" and answer["combine_with"] == ["rslora"]
    assert answer["decision_path"][-1]["answer"] == "no"


@pytest.mark.parametrize("server", ["sglang", "llama.cpp"])
def test_rslora_is_not_suggested_where_it_would_be_served_at_the_wrong_scale(server):
    training = {"seq_len": 512, "lora_rank": 64}
    answer = advise({"serve_with": server}, training=training)
    assert (answer["variant"], answer["combine_with"]) == ("lora", [])
    assert answer["hyperparameters"]["lora_config"]["use_rslora"] is False
    left_out = step(answer, "Do the settings call for rsLoRA?")
    assert left_out["answer"] == "no" and left_out["decides"] is None
    assert "alpha/r" in left_out["evidence"] and "Left out" in left_out["evidence"]
    assert answer["decision_path"][-1]["answer"] == "yes"
    # where it is merged anyway (DoRA kept for quality), rsLoRA comes along
    merged = advise(
        {"priority": "quality", "lora_quality_gap": True, "serve_with": server}, training=training
    )
    assert (merged["variant"], merged["combine_with"]) == ("dora", ["rslora"])
    assert "rsLoRA stays, as the merge applies it too" in merged["decision_path"][-1]["evidence"]


def test_qlora_merged_goes_into_the_16_bit_base():
    answer = advise({"priority": "memory", "serve_with": "merged"})
    assert answer["variant"] == "qlora"
    last = answer["decision_path"][-1]
    assert last == {
        "question": "Can the QLoRA adapter be merged into the base?",
        "answer": "yes",
        "evidence": SERVERS["merged"].serves,
        "decides": None,
    }
    assert "Merge a QLoRA adapter into the base loaded in 16 bits" in note_texts(answer)


def test_qlora_plus_dora_under_vllm_is_merged_into_the_16_bit_base():
    goal = {"priority": "quality", "lora_quality_gap": True, "serve_with": "vllm"}
    answer = advise(goal, hardware={"gpu_memory_gib": 12.0})
    assert (answer["variant"], answer["combine_with"]) == ("qlora", ["dora"])
    texts = note_texts(answer)
    assert "vLLM cannot load this adapter" in texts
    assert "Merge a QLoRA adapter into the base loaded in 16 bits" in texts


def test_llama_cpp_says_how_to_convert():
    answer = advise({"serve_with": "llama.cpp"})
    assert "convert_lora_to_gguf.py" in answer["decision_path"][-1]["evidence"]
    dora = advise({"priority": "quality", "lora_quality_gap": True, "serve_with": "llama.cpp"})
    assert "convert_hf_to_gguf.py" in note_texts(dora)
    assert "lora_magnitude_vector" in dora["decision_path"][-1]["evidence"]


CARDS = ({"gpu": "t4"}, {"gpu": "rtx-4090"}, {"gpu": "a100-80gb"})
GOALS = (
    {"priority": "none"},
    {"priority": "memory"},
    {"priority": "quality", "lora_quality_gap": True},
    {"priority": "speed"},
)


@pytest.mark.parametrize("card", CARDS, ids=lambda c: c["gpu"])
def test_serve_with_only_adds_where_the_server_loads_everything(card):
    # Across the catalog: unset, the answer has no serving step or note; a server that loads
    # every idea as trained (transformers, merged) changes nothing but the last step and the
    # serving notes; vLLM changes the pick nowhere at the default rank. (Against the main
    # branch's advisor the unset answers were byte-identical over every catalog model, these
    # cards and goals, ranks 16 and 64, when the field was added.)
    for entry in models():
        for goal in GOALS:
            base = advise(goal, training={}, hardware=card, model={"name": entry.id})
            assert not any("serve" in s["question"] for s in base["decision_path"])
            for server in ("transformers", "merged", "vllm"):
                served = advise(
                    {**goal, "serve_with": server},
                    training={},
                    hardware=card,
                    model={"name": entry.id},
                )
                where = (entry.id, card["gpu"], goal, server)
                for key in ("variant", "combine_with", "fits", "estimate", "hyperparameters"):
                    assert served[key] == base[key], (where, key)
                if server == "vllm":
                    continue
                assert served["decision_path"][:-1] == base["decision_path"], where
                assert served["decision_path"][-1]["answer"] == "yes", where
                assert served["notes"][: len(base["notes"])] == base["notes"], where
