"""The shape of a decoder-only transformer, read from a Hugging Face ``config.json``.

The memory model counts bytes per tensor, so it needs more than a parameter
count: which linear layers a block has and their sizes (GQA shrinks k/v,
Phi-3 fuses qkv and gate/up), whether the embeddings are tied to the output
head, which layers carry biases (Qwen2's q/k/v), how many norms a block has
(Gemma-2 has four), and the vocabulary size (the logits are often the largest
single tensor of a step). Everything here is plain arithmetic over the config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from advisor.errors import InvalidInput, Problem


@dataclass(frozen=True)
class Linear:
    """One ``nn.Linear`` of a transformer block, as the module is named in transformers."""

    name: str
    in_features: int
    out_features: int
    bias: bool = False

    @property
    def weight_numel(self) -> int:
        return self.in_features * self.out_features

    @property
    def numel(self) -> int:
        return self.weight_numel + (self.out_features if self.bias else 0)


# Families whose module layout we know. Anything else that carries the usual
# Llama-style fields is read as Llama-like, and the estimate says so.
_FUSED_FAMILIES = {"phi3"}
_QKV_BIAS_FAMILIES = {"qwen2"}  # Qwen2Attention hard-codes bias=True on q/k/v
_FOUR_NORM_FAMILIES = {"gemma2", "gemma3_text"}  # pre/post norms around attention and MLP
_QK_NORM_FAMILIES = {"qwen3", "gemma3_text", "olmo2"}  # per-head RMSNorm on q and k
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3_text", "qwen3"}
# Families transformers (5.24) will not run with sdpa: Gemma-2 soft-caps its attention
# logits, which sdpa cannot (Gemma2PreTrainedModel._supports_sdpa = False). The worker
# trains them with eager attention, which keeps the s x s scores.
_EAGER_ATTENTION_FAMILIES = {"gemma2"}
KNOWN_FAMILIES = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo2",
    "granite",
}


@dataclass(frozen=True)
class Architecture:
    """A decoder-only causal LM, as far as memory is concerned."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    qkv_bias: bool = False
    mlp_bias: bool = False
    norms_per_layer: int = 2
    qk_norm: bool = False
    fused: bool = False
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    max_position_embeddings: int | None = None
    attention: str = "sdpa"  # or "eager": see _EAGER_ATTENTION_FAMILIES
    notes: tuple[str, ...] = field(default=())

    # -- block structure ---------------------------------------------------------

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def block_linears(self) -> tuple[Linear, ...]:
        """The linear layers of one block, named as transformers names them."""
        return self._block_linears

    @cached_property
    def _block_linears(self) -> tuple[Linear, ...]:
        h, i = self.hidden_size, self.intermediate_size
        qkv_b = self.attention_bias or self.qkv_bias
        if self.fused:
            return (
                Linear("qkv_proj", h, self.q_dim + 2 * self.kv_dim, qkv_b),
                Linear("o_proj", self.q_dim, h, self.attention_bias),
                Linear("gate_up_proj", h, 2 * i, self.mlp_bias),
                Linear("down_proj", i, h, self.mlp_bias),
            )
        return (
            Linear("q_proj", h, self.q_dim, qkv_b),
            Linear("k_proj", h, self.kv_dim, qkv_b),
            Linear("v_proj", h, self.kv_dim, qkv_b),
            Linear("o_proj", self.q_dim, h, self.attention_bias),
            Linear("gate_proj", h, i, self.mlp_bias),
            Linear("up_proj", h, i, self.mlp_bias),
            Linear("down_proj", i, h, self.mlp_bias),
        )

    @property
    def linear_names(self) -> list[str]:
        return [lin.name for lin in self.block_linears()]

    # -- parameter counts --------------------------------------------------------

    @cached_property
    def block_linear_weight_params(self) -> int:
        """Weights of all blocks' linear layers: what NF4 quantizes (biases stay 16-bit)."""
        return self.num_hidden_layers * sum(lin.weight_numel for lin in self.block_linears())

    @cached_property
    def block_bias_params(self) -> int:
        return self.num_hidden_layers * sum(
            lin.out_features for lin in self.block_linears() if lin.bias
        )

    @cached_property
    def norm_params(self) -> int:
        per_layer = self.norms_per_layer * self.hidden_size
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        return self.num_hidden_layers * per_layer + self.hidden_size  # + the final norm

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Zero when tied: the head reuses the embedding matrix (one storage)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @cached_property
    def total_params(self) -> int:
        return (
            self.embedding_params
            + self.lm_head_params
            + self.block_linear_weight_params
            + self.block_bias_params
            + self.norm_params
        )

    @property
    def unquantized_params(self) -> int:
        """What QLoRA leaves in 16-bit: embeddings, head, norms, biases."""
        return self.total_params - self.block_linear_weight_params

    # -- adapters ----------------------------------------------------------------

    def resolve_targets(self, target_modules: str | list[str]) -> list[Linear]:
        """The block linears that get an adapter. ``"all-linear"`` follows peft:
        every linear layer but the output head."""
        linears = self.block_linears()
        if isinstance(target_modules, str):
            if target_modules == "all-linear":
                return list(linears)
            target_modules = [target_modules]
        wanted = set(target_modules)
        unknown = sorted(wanted - {lin.name for lin in linears})
        if unknown:
            raise InvalidInput(
                [
                    Problem(
                        "training.target_modules",
                        f"{unknown} are not linear layers of this {self.model_type} model; "
                        f"use 'all-linear' or a subset of {self.linear_names}",
                        unknown,
                    )
                ]
            )
        return [lin for lin in linears if lin.name in wanted]

    def lora_params(self, rank: int, target_modules: str | list[str], dora: bool = False) -> int:
        """LoRA's A (r x in) and B (out x r) per adapted layer and block; DoRA adds
        one magnitude entry per output feature (Liu et al. 2024, DoRA, eq. 2)."""
        per_block = 0
        for lin in self.resolve_targets(target_modules):
            per_block += rank * (lin.in_features + lin.out_features)
            if dora:
                per_block += lin.out_features
        return self.num_hidden_layers * per_block

    def summary(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "total_params": self.total_params,
            "block_linear_params": self.block_linear_weight_params,
        }


_REQUIRED = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)
# Upper bounds on a config's sizes. The largest published dense models sit far below them
# (Llama-3.1-405B: hidden_size 16384, intermediate_size 53248, 126 layers, 128 heads;
# vocabularies of about 262k entries; contexts of 10M tokens): a value above one is a typo
# or junk, and left unchecked it overflows the memory model's floating-point arithmetic.
LIMITS = {
    "hidden_size": 1 << 20,
    "intermediate_size": 1 << 22,
    "num_hidden_layers": 1 << 14,
    "num_attention_heads": 1 << 14,
    "num_key_value_heads": 1 << 14,
    "head_dim": 1 << 16,
    "vocab_size": 1 << 24,
    "max_position_embeddings": 1 << 40,
}


def _show(value: Any) -> str:
    """A short rendering of a config value for a message (repr cannot print integers of
    more than 4300 digits, and a long list should not fill the answer)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int_field(
    cfg: Mapping[str, Any],
    key: str,
    problems: list[Problem],
    where: str,
    required: bool = True,
) -> int | None:
    """A positive integer no larger than ``LIMITS[key]``; None (and a problem) otherwise, or
    None without a problem when an optional key is absent or null."""
    value = cfg.get(key)
    field = f"{where}.{key}"
    if value is None:
        if required:
            problems.append(
                Problem(
                    field,
                    f"is missing; a causal-LM config.json needs '{key}' (a positive integer)",
                )
            )
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        problems.append(
            Problem(
                field,
                f"must be a positive integer (a JSON number without a fraction), got "
                f"{_show(value)}",
                value,
            )
        )
        return None
    limit = LIMITS[key]
    if value > limit:
        problems.append(
            Problem(
                field,
                f"is {_show(value)}, above the {limit:,} this advisor accepts and far beyond "
                "any published model; check the config.json",
                value,
            )
        )
        return None
    return value


def _bool_field(
    cfg: Mapping[str, Any], key: str, default: bool, problems: list[Problem], where: str
) -> bool:
    """A JSON boolean; absent or null means ``default``. A string such as "yes" is refused,
    not read as true: transformers would not read it so either."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        problems.append(
            Problem(
                f"{where}.{key}",
                f"must be true or false (a JSON boolean), got {_show(value)}; write it "
                "without quotes, or remove it for the default",
                value,
            )
        )
        return default
    return value


def _softcap_field(
    cfg: Mapping[str, Any], key: str, problems: list[Problem], where: str
) -> float | None:
    """Gemma-2's logit soft-capping: a positive number, or absent/null for none."""
    value = cfg.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        problems.append(
            Problem(
                f"{where}.{key}",
                f"must be a positive number (such as 30.0) or null, got {_show(value)}",
                value,
            )
        )
        return None
    return float(value)


def from_hf_config(cfg: Mapping[str, Any], where: str = "model.config") -> Architecture:
    """Read an :class:`Architecture` from a Hugging Face ``config.json`` mapping.

    Raises :class:`InvalidInput` listing every missing or bad field at once.
    """
    if not isinstance(cfg, Mapping):
        raise InvalidInput([Problem(where, "must be a JSON object (the model's config.json)")])
    # Multimodal wrappers (Gemma-3, Llama-4...) keep the language model under text_config.
    if (
        "text_config" in cfg
        and "hidden_size" not in cfg
        and isinstance(cfg["text_config"], Mapping)
    ):
        cfg = cfg["text_config"]
        where = f"{where}.text_config"

    problems: list[Problem] = []
    raw_type = cfg.get("model_type")
    if raw_type is not None and not isinstance(raw_type, str):
        problems.append(
            Problem(
                f"{where}.model_type",
                f"must be a string such as 'llama' or 'qwen2', got {_show(raw_type)}",
                raw_type,
            )
        )
        raw_type = None
    model_type = raw_type or "llama"
    if cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts"):
        problems.append(
            Problem(
                f"{where}.model_type",
                f"mixture-of-experts models ({model_type}) are not modelled yet; "
                "choose a dense model",
            )
        )
    values = {key: _int_field(cfg, key, problems, where) for key in _REQUIRED}
    heads = values["num_attention_heads"]
    kv: int | None
    if cfg.get("num_key_value_heads") is None:
        kv = heads
    else:
        kv = _int_field(cfg, "num_key_value_heads", problems, where)
    if heads and kv and heads % kv:
        problems.append(
            Problem(
                f"{where}.num_key_value_heads",
                f"{kv} does not divide num_attention_heads={heads}; grouped-query attention "
                "needs num_attention_heads to be a multiple of num_key_value_heads",
                kv,
            )
        )
    hidden = values["hidden_size"]
    head_dim: int | None
    if cfg.get("head_dim") is None:
        head_dim = None
        if hidden and heads:
            if hidden % heads:
                problems.append(
                    Problem(
                        f"{where}.head_dim",
                        f"is missing and hidden_size={hidden} is not a multiple of "
                        f"num_attention_heads={heads}; give head_dim explicitly",
                    )
                )
            head_dim = hidden // heads or None
    else:
        head_dim = _int_field(cfg, "head_dim", problems, where)
    max_positions = _int_field(cfg, "max_position_embeddings", problems, where, required=False)
    tie_default = model_type in _TIED_BY_DEFAULT
    tie = _bool_field(cfg, "tie_word_embeddings", tie_default, problems, where)
    attention_bias = _bool_field(cfg, "attention_bias", False, problems, where)
    mlp_bias = _bool_field(cfg, "mlp_bias", False, problems, where)
    attn_cap = _softcap_field(cfg, "attn_logit_softcapping", problems, where)
    final_cap = _softcap_field(cfg, "final_logit_softcapping", problems, where)
    if problems:
        raise InvalidInput(problems)

    notes: list[str] = []
    if model_type in _EAGER_ATTENTION_FAMILIES:
        notes.append(
            f"{model_type} trains with eager attention (transformers has no sdpa for it): "
            "the s x s attention scores count, quadratic in seq_len"
        )
    if model_type not in KNOWN_FAMILIES:
        notes.append(
            f"model_type '{model_type}' is read as a Llama-style decoder "
            "(separate q/k/v/o, gated MLP, two norms per block)"
        )
    assert hidden and heads and kv and head_dim  # for the type checker; checked above
    return Architecture(
        model_type=model_type,
        hidden_size=hidden,
        intermediate_size=values["intermediate_size"] or 0,
        num_hidden_layers=values["num_hidden_layers"] or 0,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        vocab_size=values["vocab_size"] or 0,
        tie_word_embeddings=tie,
        attention_bias=attention_bias,
        qkv_bias=model_type in _QKV_BIAS_FAMILIES,
        mlp_bias=mlp_bias,
        norms_per_layer=4 if model_type in _FOUR_NORM_FAMILIES else 2,
        qk_norm=model_type in _QK_NORM_FAMILIES,
        fused=model_type in _FUSED_FAMILIES,
        attn_logit_softcapping=attn_cap,
        final_logit_softcapping=final_cap,
        max_position_embeddings=max_positions,
        attention="eager" if model_type in _EAGER_ATTENTION_FAMILIES else "sdpa",
        notes=tuple(notes),
    )
