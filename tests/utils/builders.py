"""Builders for test data: a tiny random-init Llama with an offline tokenizer, and JSONL files.

Everything here is built locally in well under a second: no network, no downloaded weights.
The model is random, so what it "knows" comes only from the data: `write_jsonl` writes a
learnable pattern (a fixed cycle of words, so each word predicts the next) on which the
training loss of a LoRA adapter falls within 20-40 optimizer steps.

Tests build these once per session through fixtures (see `tests/worker/conftest.py`); the
functions are plain so that other test packages can build their own copies. `plan_dict`
gives a 30-step plan for the tiny model, and `RecordingHooks` records a run's events and
progress (and can cancel it after a given step) for tests of code that drives training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

from worker.training import TrainingHooks

# The cycle the data walks round: each word is followed by exactly one other word, so a model
# that has learned the bigrams predicts every next token. The words are frequent in the
# tokenizer's training corpus, so each becomes a single BPE token.
CYCLE_WORDS = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
)

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# A ChatML-style template, deliberately different from the plain template worker/data.py uses
# for tokenizers without one, so tests can tell which path ran.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DataFormat = Literal["text", "prompt_completion", "messages"]


def _tokenizer_corpus() -> list[str]:
    rng = random.Random(1234)
    lines = []
    for _ in range(400):
        start = rng.randrange(len(CYCLE_WORDS))
        words = [CYCLE_WORDS[(start + i) % len(CYCLE_WORDS)] for i in range(12)]
        lines.append(" ".join(words))
    lines += [
        "continue the sequence from",
        "system user assistant: you are a helpful model.",
        "The quick brown fox jumps over the lazy dog. 0123456789",
    ] * 20
    return lines


def build_tokenizer(
    dest_dir: Path | str,
    *,
    vocab_size: int = 512,
    chat_template: bool = True,
    pad_token: bool = True,
):
    """Train a byte-level BPE tokenizer offline and save it as a `PreTrainedTokenizerFast`.

    Byte-level, so any text tokenizes (no unknown characters). Special tokens: `<s>` (bos,
    added in front of every encoded string), `</s>` (eos), `<pad>` (unless `pad_token=False`,
    to test the pad-equals-eos fallback), `<unk>`, and the ChatML markers. With
    `chat_template=True` the tokenizer carries `CHAT_TEMPLATE`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS, EOS, UNK, IM_START, IM_END] + ([PAD] if pad_token else [])
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, tok.token_to_id(BOS))],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD if pad_token else None,
        additional_special_tokens=[IM_START, IM_END],
    )
    if chat_template:
        wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(str(dest_dir))
    return wrapped


def build_tiny_llama(
    dest_dir: Path | str,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
    chat_template: bool = True,
    pad_token: bool = True,
) -> Path:
    """Save a random-init `LlamaForCausalLM` (safetensors) plus its tokenizer into `dest_dir`.

    `vocab_size` is the tokenizer's BPE target; the model's embedding matches the trained
    tokenizer's real size. Same arguments and seed give identical weights. Returns `dest_dir`.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(
        dest, vocab_size=vocab_size, chat_template=chat_template, pad_token=pad_token
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(str(dest))
    return dest


def _walk(start: int, length: int) -> str:
    return " ".join(CYCLE_WORDS[(start + i) % len(CYCLE_WORDS)] for i in range(length))


def make_rows(fmt: DataFormat, n_rows: int, seed: int = 0) -> list[dict]:
    """The rows `write_jsonl` writes, for tests that want them in memory."""
    rng = random.Random(seed)
    rows: list[dict] = []
    for _ in range(n_rows):
        start = rng.randrange(len(CYCLE_WORDS))
        if fmt == "text":
            rows.append({"text": _walk(start, 10)})
        elif fmt == "prompt_completion":
            rows.append(
                {
                    "prompt": f"continue the sequence from {_walk(start, 2)}:",
                    "completion": " " + _walk(start + 2, 6),
                }
            )
        elif fmt == "messages":
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": "you are a helpful model."},
                        {"role": "user", "content": _walk(start, 2)},
                        {"role": "assistant", "content": _walk(start + 2, 4)},
                        {"role": "user", "content": _walk(start + 6, 1)},
                        {"role": "assistant", "content": _walk(start + 7, 3)},
                    ]
                }
            )
        else:
            raise ValueError(f"fmt={fmt!r}: use 'text', 'prompt_completion' or 'messages'")
    return rows


def write_jsonl(path: Path | str, fmt: DataFormat, n_rows: int, seed: int = 0) -> Path:
    """Write `n_rows` learnable rows in format `fmt` to `path` (one JSON object per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in make_rows(fmt, n_rows, seed):
            fh.write(json.dumps(row) + "\n")
    return path


def plan_dict(model_dir: Path | str, train_file: Path | str, output_dir: Path | str, **overrides):
    """A small, fast training plan (as a dict) for the tiny model: 30 steps of seq_len 32.

    The learning rate is far above a real run's so a random-init model visibly learns the
    cycle pattern in 30 steps on CPU. Override any field by keyword.
    """
    plan = {
        "model": str(model_dir),
        "train_file": str(train_file),
        "output_dir": str(output_dir),
        "max_steps": 30,
        "learning_rate": 1e-2,
        "micro_batch_size": 4,
        "seq_len": 32,
        "lora_rank": 8,
        "lora_dropout": 0.0,
        "seed": 0,
    }
    plan.update(overrides)
    return plan


class RecordingHooks(TrainingHooks):
    """Keeps every event and progress report; stops once `stop_after` steps were reported."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.progress: list[dict[str, Any]] = []
        self.stop_after = stop_after

    def on_event(self, type: str, data: dict[str, Any]) -> None:
        self.events.append((type, data))

    def on_progress(self, step, total_steps, loss, learning_rate, tokens_per_second, eta_seconds):
        self.progress.append(
            {
                "step": step,
                "total_steps": total_steps,
                "loss": loss,
                "learning_rate": learning_rate,
                "tokens_per_second": tokens_per_second,
                "eta_seconds": eta_seconds,
            }
        )

    def should_stop(self, step_end: bool = False) -> bool:
        return self.stop_after is not None and any(
            p["step"] >= self.stop_after for p in self.progress
        )

    def of_type(self, type: str) -> list[dict[str, Any]]:
        return [data for kind, data in self.events if kind == type]


def add_placeholder_file(s: Any, owner: str | None = None) -> str:
    """A file row in the job store for tests that need a job but never read its data;
    returns its id. ``s`` is an open store session."""
    from loracle.store import jobs as store

    file_id = store.new_id("file")
    store.add_file(
        s,
        id=file_id,
        owner=owner,
        filename="t.jsonl",
        purpose="fine-tune",
        bytes=1,
        rows=1,
        format="text",
        sha256="0" * 64,
        path="/dev/null",
    )
    return file_id
