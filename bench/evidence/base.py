"""The base model every variant fine-tunes: a small Llama pretrained on Python's standard library.

Why this corpus: every machine that runs loracle has it (the interpreter's own `Lib/`), so the
benchmark needs no network and no downloaded weights. It is text and code: docstrings,
comments, doctests and the code around them.

The build, in order, every step seeded:

1. Corpus: the standard library's `.py` files (tests, IDLE, tkinter, lib2to3, turtledemo and
   ensurepip left out), in sorted path order. Every `HOLDOUT_EVERY`-th file is held out to
   measure what the model learned.
2. Tokenizer: byte-level BPE trained on the corpus (`tokenizers`; deterministic for the same
   text).
3. Model: a fresh `LlamaForCausalLM` pretrained with transformers' `Trainer` on `seq_len`-token
   chunks of the training files, for `steps` optimizer steps, on `torch_threads` threads.
4. Record: `bench-base.json` next to the weights: the spec, the corpus digest, the held-out
   loss of the model against the corpus's unigram entropy (the loss of a model that learned
   only token frequencies), the loss curve, the weights' sha256 and the build time.

The result is cached in `cache_root()/<key>/`, where the key hashes the spec, the corpus
digest, the Python version and the versions of torch, transformers and tokenizers: the same
inputs on the same machine rebuild the same weights (CPU kernels are deterministic for a fixed
thread count, which the spec fixes), and a change of any of them builds a new base beside
the old one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import sysconfig
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HOLDOUT_EVERY = 25
SKIP_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "__pycache__",
    }
)
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
RECORD = "bench-base.json"


@dataclass(frozen=True)
class BaseSpec:
    """Size and pretraining budget of the base. Time grows with `steps` x `batch_size` x
    `seq_len` x parameters; CPU memory stays under a few hundred MB at these sizes."""

    vocab_size: int = 2048
    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 500
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    seed: int = 0
    corpus_files: int | None = None
    """Use only the first this many files of the corpus (None: all): a smaller, faster base."""
    torch_threads: int = 1
    """Threads of the pretraining. Part of the spec because CPU matmuls split their sums
    differently over a different number of threads: the same seed gives the same bits only
    with the same thread count."""

    @property
    def tag(self) -> str:
        return (
            f"llama-h{self.hidden_size}-l{self.num_hidden_layers}-v{self.vocab_size}"
            f"-s{self.steps}-seed{self.seed}"
        )


def cache_root() -> Path:
    """`$LORACLE_BENCH_CACHE`, else `$XDG_CACHE_HOME/loracle/bench`, else
    `~/.cache/loracle/bench`: outside the repository, shared by every checkout."""
    if os.environ.get("LORACLE_BENCH_CACHE"):
        return Path(os.environ["LORACLE_BENCH_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "loracle" / "bench"


def stdlib_files(limit: int | None = None) -> list[Path]:
    """The corpus files, in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        path
        for path in root.rglob("*.py")
        if not (set(path.relative_to(root).parts[:-1]) & SKIP_DIRS)
    )
    if not files:
        raise RuntimeError(f"no Python sources under {root}; the benchmark needs the stdlib's .py")
    return files[:limit] if limit else files


def read_corpus(limit: int | None = None) -> tuple[list[str], list[str], str]:
    """(training texts, held-out texts, sha256 of everything read)."""
    digest = hashlib.sha256()
    train, held_out = [], []
    for i, path in enumerate(stdlib_files(limit)):
        text = path.read_text(encoding="utf-8", errors="replace")
        digest.update(path.name.encode() + b"\0" + text.encode())
        (held_out if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 else train).append(text)
    return train, held_out, digest.hexdigest()


def _versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def cache_key(spec: BaseSpec, corpus_digest: str) -> str:
    blob = json.dumps(
        {"spec": asdict(spec), "corpus": corpus_digest, "versions": _versions()}, sort_keys=True
    )
    return f"{spec.tag}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Every encoded string starts with bos, as the worker's data code expects of a tokenizer.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )


def _chunks(texts: list[str], tokenizer, seq_len: int) -> list[list[int]]:
    """Files as `<s> tokens </s>`, concatenated and cut into `seq_len`-token chunks."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        stream += [*ids, tokenizer.eos_token_id]
    return [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]


def unigram_entropy(chunks: list[list[int]], held_out: list[list[int]]) -> float:
    """Cross-entropy (nats/token) on the held-out chunks of a model that knows only the
    training chunks' token frequencies (add-one smoothed): the floor a model must beat to
    have learned anything beyond frequencies."""
    counts = Counter(t for chunk in chunks for t in chunk)
    total = sum(counts.values())
    vocab = max(max(counts), max(t for c in held_out for t in c)) + 1
    tokens = [t for chunk in held_out for t in chunk[1:]]
    return -sum(math.log((counts[t] + 1) / (total + vocab)) for t in tokens) / len(tokens)


def held_out_loss(model, chunks: list[list[int]], batch_size: int) -> float:
    import torch

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(chunks), batch_size):
            batch = torch.tensor(chunks[i : i + batch_size])
            out = model(input_ids=batch, labels=batch)
            count = batch.numel() - batch.shape[0]
            total += float(out.loss) * count
            n += count
    return total / n


def weights_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _pretrain(spec: BaseSpec, dest: Path, log) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    started = time.perf_counter()
    torch.set_num_threads(spec.torch_threads)
    train_texts, held_texts, digest = read_corpus(spec.corpus_files)
    tokenizer = train_tokenizer(train_texts, spec.vocab_size)
    train_chunks = _chunks(train_texts, tokenizer, spec.seq_len)
    held_chunks = _chunks(held_texts, tokenizer, spec.seq_len)[:64]
    log(
        f"base: corpus {len(train_texts)} + {len(held_texts)} held-out files, "
        f"{len(train_chunks)} chunks of {spec.seq_len} tokens; pretraining {spec.steps} steps"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    transformers.set_seed(spec.seed)
    model = LlamaForCausalLM(config)
    initial = held_out_loss(model, held_chunks, spec.batch_size)
    model.train()
    dataset = [{"input_ids": c, "labels": c} for c in train_chunks]
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=spec.steps,
            per_device_train_batch_size=spec.batch_size,
            learning_rate=spec.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=spec.warmup_steps,
            weight_decay=0.1,
            adam_beta2=0.98,
            max_grad_norm=1.0,
            logging_steps=max(1, spec.steps // 20),
            save_strategy="no",
            eval_strategy="no",
            seed=spec.seed,
            data_seed=spec.seed,
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    curve = [
        {"step": e["step"], "loss": round(e["loss"], 4)}
        for e in trainer.state.log_history
        if "loss" in e
    ]
    final = held_out_loss(model, held_chunks, spec.batch_size)
    model.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    record = {
        "spec": asdict(spec),
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus": {
            "source": "Python standard library .py files (sysconfig stdlib path)",
            "sha256": digest,
            "train_files": len(train_texts),
            "held_out_files": len(held_texts),
            "train_tokens": len(train_chunks) * spec.seq_len,
            "tokens_seen": spec.steps * spec.batch_size * spec.seq_len,
        },
        "held_out_loss": {
            "random_init": round(initial, 4),
            "unigram_entropy": round(unigram_entropy(train_chunks, held_chunks), 4),
            "pretrained": round(final, 4),
        },
        "loss_curve": curve,
        "versions": _versions(),
        "torch_threads": torch.get_num_threads(),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    return record


def build_base(spec: BaseSpec, log=print) -> tuple[Path, dict[str, Any]]:
    """The cached base for `spec` (built on first use): (model directory, its record)."""
    _, _, digest = read_corpus(spec.corpus_files)
    key = cache_key(spec, digest)
    root = cache_root()
    final = root / key
    if (final / RECORD).is_file():
        record = json.loads((final / RECORD).read_text())
        record["cached"] = True
        return final, record
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        record = _pretrain(spec, scratch, log)
        record["key"] = key
        record["weights_sha256"] = weights_sha256(scratch)
        (scratch / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        try:
            scratch.rename(final)  # atomic: a half-built base is never found
        except OSError:
            if not (final / RECORD).is_file():  # lost a race to an identical build: fine
                raise
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    record["cached"] = False
    return final, record
