"""Where the adapter will be served, and what each server does with each idea of the family.

One table, `SERVERS`, keyed by the values of ``goal.serve_with``. Each server says, for every
idea of the variant registry (`advisor.variants.IDEA_NAMES`, checked at import), whether it
loads an adapter trained with that idea as it is, or needs the adapter merged into the base
first, in one sentence with its source. The decision tree (`advisor.decide`) reads it to keep
an idea the goal asked for with a "merge before serving" note, to leave out an idea the
advice would only have suggested, and to keep the rank within what the server loads.

Every fact carries its source, checked against the projects' code and documentation in
December 2026; a server that changes is one edit here (and its test in
tests/advisor/test_serving.py):

- vLLM refuses DoRA adapters: ``vllm/lora/peft_helper.py`` raises "vLLM does not yet support
  DoRA." (https://github.com/vllm-project/vllm/issues/10849, open; the PR that would add it,
  https://github.com/vllm-project/vllm/pull/47395, is not merged). It reads ``use_rslora`` and
  scales by alpha/sqrt(r) (https://github.com/vllm-project/vllm/pull/6909). Its
  ``max_lora_rank`` is one of 1, 8, 16, 32, 64, 128, 256, 320, 512, default 16, and every
  adapter's rank must be at most it (``MaxLoRARanks`` in ``vllm/config/lora.py``,
  https://github.com/vllm-project/vllm/blob/main/vllm/config/lora.py;
  https://docs.vllm.ai/en/latest/features/lora.html).
- SGLang refuses DoRA adapters ("LoRA serving currently doesn't support DoRA adapters",
  ``python/sglang/srt/lora/lora_manager.py``, https://github.com/sgl-project/sglang/pull/22125)
  and serves ``use_rslora`` adapters at alpha/r, sqrt(r) times too weak
  (https://github.com/sgl-project/sglang/issues/40835, open). Its ``--max-lora-rank`` is
  inferred from ``--lora-paths`` (https://docs.sglang.io/advanced_features/lora.html).
- llama.cpp's ``convert_lora_to_gguf.py`` stops at any tensor other than lora_A/lora_B, such
  as DoRA's ``lora_magnitude_vector`` (https://github.com/ggml-org/llama.cpp/issues/6536, closed
  unimplemented), and writes only ``lora_alpha``: llama.cpp scales every adapter by alpha/r
  (``get_scale`` in ``src/llama-adapter.h``), so rsLoRA's alpha/sqrt(r) is lost
  (https://github.com/ggml-org/llama.cpp/blob/master/convert_lora_to_gguf.py).
- peft loads every variant from ``adapter_config.json`` and merges every one with
  ``merge_and_unload()``; merged into 4-bit layers the sum is quantized again ("may get
  different generations due to rounding errors", ``peft/tuners/lora/bnb.py``), so a QLoRA
  adapter is merged into the base loaded in 16 bits
  (https://huggingface.co/docs/peft/main/en/developer_guides/lora#merge-lora-weights-into-the-base-model).

Pure: data and string formatting only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from advisor.variants import IDEA_NAMES, VARIANTS, Combination

PEFT_MERGE = (
    "peft merge_and_unload(), "
    "https://huggingface.co/docs/peft/main/en/developer_guides/lora"
    "#merge-lora-weights-into-the-base-model; peft/tuners/lora/bnb.py"
)
VLLM_LORA_DOCS = "https://docs.vllm.ai/en/latest/features/lora.html"
SGLANG_LORA_DOCS = "https://docs.sglang.io/advanced_features/lora.html"
LLAMA_CPP_CONVERTER = "https://github.com/ggml-org/llama.cpp/blob/master/convert_lora_to_gguf.py"


@dataclass(frozen=True)
class IdeaServing:
    """What one server does with an adapter trained with one idea."""

    loads: bool
    """The server loads the adapter as it is; False: only merged into the base first."""
    text: str
    """One sentence: what happens to the idea there (a note of the answer)."""
    source: str


@dataclass(frozen=True)
class Server:
    """One value of ``goal.serve_with``."""

    name: str
    title: str
    question: str
    """The path's last question, "{label}" the recommended combination."""
    serves: str
    """How it serves an adapter it loads as it is; "{rank}" is the adapter's rank and
    "{max_rank}" the rank limit to start it with."""
    source: str
    merge: str
    """How it serves an adapter that has to be merged first."""
    ideas: Mapping[str, IdeaServing]
    max_lora_ranks: tuple[int, ...] = ()
    """The values its max-LoRA-rank setting takes, ascending; empty when any rank loads."""
    adapter: bool = True
    """It serves an adapter; False: the adapter is folded into the base (merged)."""

    def needs_merge(self, combo: Combination) -> list[str]:
        """The ideas of ``combo`` this server loads only merged into the base."""
        return [n for n in combo.names if not self.ideas[n].loads]

    def rank_limit(self, rank: int) -> int | None:
        """The smallest max-LoRA-rank setting that loads rank ``rank``; None when none does
        (or the server has no such setting)."""
        return next((r for r in self.max_lora_ranks if r >= rank), None)

    @property
    def largest_rank(self) -> int | None:
        return self.max_lora_ranks[-1] if self.max_lora_ranks else None


def _ideas(**entries: IdeaServing) -> Mapping[str, IdeaServing]:
    return MappingProxyType(entries)


_LORAPLUS_TRAINING_ONLY = IdeaServing(
    True,
    "LoRA+ changes only training (B's learning rate): its adapter is a plain LoRA adapter "
    "and is served as one.",
    "Hayou et al. 2024, LoRA+, arXiv:2402.12354; peft create_loraplus_optimizer",
)
_QLORA_ON_16_BIT = (
    "A QLoRA adapter is an ordinary LoRA adapter (the 4-bit base is a training-time choice "
    "that adapter_config.json does not record): it is served on the 16-bit base, whose "
    "weights differ from the NF4 ones it was trained against only by the quantization error."
)

SERVERS: dict[str, Server] = {
    server.name: server
    for server in (
        Server(
            name="transformers",
            title="transformers (peft)",
            question="Does transformers (peft) load the {label} adapter as it is?",
            serves="transformers with peft loads every variant as it is: "
            "PeftModel.from_pretrained(base, adapter_dir) reads use_dora and use_rslora "
            "from adapter_config.json.",
            source="peft PeftModel.from_pretrained, "
            "https://huggingface.co/docs/peft/main/en/package_reference/peft_model",
            merge="",
            ideas=_ideas(
                qlora=IdeaServing(
                    True,
                    "Load a QLoRA adapter on the base loaded in 4 bits with the same "
                    "BitsAndBytesConfig it was trained with (or on the 16-bit base).",
                    "Dettmers et al. 2023, QLoRA, arXiv:2305.14314; transformers "
                    "BitsAndBytesConfig",
                ),
                dora=IdeaServing(
                    True,
                    "peft applies DoRA's magnitude vectors at inference as in training.",
                    "peft LoraConfig use_dora",
                ),
                loraplus=_LORAPLUS_TRAINING_ONLY,
                rslora=IdeaServing(
                    True, "peft scales by alpha/sqrt(r) as in training.", "peft use_rslora"
                ),
            ),
        ),
        Server(
            name="vllm",
            title="vLLM",
            question="Does vLLM load the {label} adapter as it is?",
            serves="Serve with vLLM: vllm serve <base> --enable-lora --max-lora-rank "
            "{max_rank} --lora-modules <name>=<adapter dir>; max_lora_rank takes 1, 8, 16, "
            "32, 64, 128, 256, 320 or 512 (default 16) and must be at least the adapter's "
            "rank ({rank}).",
            source=f"vllm/config/lora.py MaxLoRARanks; {VLLM_LORA_DOCS}",
            merge="vLLM cannot load this adapter: merge it into the base with peft's "
            "merge_and_unload(), save the merged model and serve that (vllm serve "
            "<merged dir>, without --enable-lora).",
            ideas=_ideas(
                qlora=IdeaServing(
                    True,
                    _QLORA_ON_16_BIT + " vLLM also loads it on the base quantized at load "
                    "(--quantization bitsandbytes), as it was trained.",
                    "vLLM examples/offline_inference/lora_with_quantization_inference.py",
                ),
                dora=IdeaServing(
                    False,
                    "vLLM refuses DoRA adapters ('vLLM does not yet support DoRA'): merge "
                    "a DoRA adapter before serving with vLLM.",
                    "https://github.com/vllm-project/vllm/issues/10849 (open); "
                    "vllm/lora/peft_helper.py",
                ),
                loraplus=_LORAPLUS_TRAINING_ONLY,
                rslora=IdeaServing(
                    True,
                    "vLLM reads use_rslora and scales by alpha/sqrt(r), as peft does.",
                    "https://github.com/vllm-project/vllm/pull/6909; vllm/lora/peft_helper.py",
                ),
            ),
            max_lora_ranks=(1, 8, 16, 32, 64, 128, 256, 320, 512),
        ),
        Server(
            name="sglang",
            title="SGLang",
            question="Does SGLang load the {label} adapter as it is?",
            serves="Serve with SGLang: python -m sglang.launch_server --model-path <base> "
            "--enable-lora --lora-paths <name>=<adapter dir>; --max-lora-rank is inferred "
            "from --lora-paths (give --max-lora-rank {rank} or more only to load adapters "
            "of a larger rank after start-up).",
            source=SGLANG_LORA_DOCS,
            merge="SGLang cannot serve this adapter as trained: merge it into the base with "
            "peft's merge_and_unload(), save the merged model and serve that "
            "(--model-path <merged dir>, without --enable-lora).",
            ideas=_ideas(
                qlora=IdeaServing(True, _QLORA_ON_16_BIT, SGLANG_LORA_DOCS),
                dora=IdeaServing(
                    False,
                    "SGLang refuses DoRA adapters ('LoRA serving currently doesn't support "
                    "DoRA adapters'): merge a DoRA adapter before serving with SGLang.",
                    "https://github.com/sgl-project/sglang/pull/22125; "
                    "python/sglang/srt/lora/lora_manager.py",
                ),
                loraplus=_LORAPLUS_TRAINING_ONLY,
                rslora=IdeaServing(
                    False,
                    "SGLang ignores use_rslora and scales every adapter by alpha/r, sqrt(r) "
                    "times weaker than rsLoRA trained it: merge an rsLoRA adapter before "
                    "serving with SGLang.",
                    "https://github.com/sgl-project/sglang/issues/40835 (open); "
                    "python/sglang/srt/lora/lora.py",
                ),
            ),
        ),
        Server(
            name="merged",
            title="a merged model",
            question="Can the {label} adapter be merged into the base?",
            serves="Merged with peft's merge_and_unload() and saved, the model is a plain "
            "checkpoint any server runs, with no adapter and no rank limit.",
            source=PEFT_MERGE,
            merge="",
            ideas=_ideas(
                qlora=IdeaServing(
                    True,
                    "Merge a QLoRA adapter into the base loaded in 16 bits (no "
                    "quantization_config): merged into the 4-bit layers the sum is quantized "
                    "again, with rounding errors peft warns of.",
                    PEFT_MERGE,
                ),
                dora=IdeaServing(
                    True,
                    "Merging folds DoRA's magnitude and direction into the weights: the "
                    "merged model costs nothing extra at inference.",
                    PEFT_MERGE,
                ),
                loraplus=_LORAPLUS_TRAINING_ONLY,
                rslora=IdeaServing(
                    True, "Merging applies rsLoRA's alpha/sqrt(r) scale.", PEFT_MERGE
                ),
            ),
            adapter=False,
        ),
        Server(
            name="llama.cpp",
            title="llama.cpp",
            question="Does llama.cpp load the {label} adapter as it is?",
            serves="Serve with llama.cpp: python convert_lora_to_gguf.py --base <16-bit base "
            "dir> <adapter dir> writes a GGUF adapter, applied with llama-server -m "
            "<base>.gguf --lora <adapter>.gguf (on a quantized GGUF base too).",
            source=LLAMA_CPP_CONVERTER,
            merge="llama.cpp cannot apply this adapter as trained: merge it into the 16-bit "
            "base with peft's merge_and_unload(), save it, and convert the merged model "
            "with convert_hf_to_gguf.py.",
            ideas=_ideas(
                qlora=IdeaServing(
                    True,
                    _QLORA_ON_16_BIT + " convert_lora_to_gguf.py reads only the base's "
                    "config, and the GGUF adapter applies to any GGUF of that base.",
                    LLAMA_CPP_CONVERTER,
                ),
                dora=IdeaServing(
                    False,
                    "convert_lora_to_gguf.py stops at DoRA's lora_magnitude_vector tensors "
                    "('Not a lora_A or lora_B tensor'): merge a DoRA adapter before "
                    "converting it for llama.cpp.",
                    "https://github.com/ggml-org/llama.cpp/issues/6536 (closed, not "
                    f"implemented); {LLAMA_CPP_CONVERTER}",
                ),
                loraplus=_LORAPLUS_TRAINING_ONLY,
                rslora=IdeaServing(
                    False,
                    "convert_lora_to_gguf.py keeps only lora_alpha and llama.cpp scales every "
                    "adapter by alpha/r, sqrt(r) times weaker than rsLoRA trained it: merge "
                    "an rsLoRA adapter before converting it.",
                    f"{LLAMA_CPP_CONVERTER}; llama.cpp src/llama-adapter.h get_scale",
                ),
            ),
        ),
    )
}

SERVER_NAMES: tuple[str, ...] = tuple(SERVERS)

# Every server answers for every idea of the registry, so a new variant cannot be served
# without saying how (a KeyError at import rather than a wrong answer later).
for _server in SERVERS.values():
    if set(_server.ideas) != set(IDEA_NAMES):
        raise KeyError(
            f"advisor.serving: {_server.name} covers {sorted(_server.ideas)}, the registry's "
            f"ideas are {sorted(IDEA_NAMES)}"
        )

# The literal of goal.serve_with, derived from the table (as advisor.variants derives the
# variant names): a type checker sees `str`, pydantic the literal, which it validates against
# and lists in the OpenAPI schema.
if TYPE_CHECKING:
    ServeWith = str
else:
    ServeWith = Literal[SERVER_NAMES]


def table_markdown() -> str:
    """The README's table of what each server does with each idea, produced from `SERVERS`
    (a test checks the README holds it, so the two cannot drift apart)."""
    names = list(IDEA_NAMES)
    lines = [
        "| `serve_with` | " + " | ".join(VARIANTS[n].title for n in names) + " | rank |",
        "|---" * (len(names) + 2) + "|",
    ]
    for server in SERVERS.values():
        loads = "as trained" if server.adapter else "merges"
        cells = [loads if server.ideas[n].loads else "merge first" for n in names]
        if server.max_lora_ranks:
            ranks = ", ".join(str(r) for r in server.max_lora_ranks)
            rank = f"at most `--max-lora-rank` ({ranks})"
        else:
            rank = "any" if server.adapter else "no adapter, no limit"
        lines.append(f"| `{server.name}` | " + " | ".join(cells) + f" | {rank} |")
    return "\n".join(lines)
