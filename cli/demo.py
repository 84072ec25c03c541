"""``loracle demo``: a whole fine-tuning job with nothing downloaded.

It builds a tiny Llama (random weights, a byte-level BPE tokenizer trained here on a small
built-in corpus, safetensors) and a JSONL of a task such a model learns in a few dozen steps,
both inside the first of the service's model roots; uploads the data, submits a LoRA job to the
running service and follows it to the end. A second run reuses the model.

The task: a fixed cycle of words (alpha, bravo, ... lima, then alpha again), where each word
predicts the next. A prompt gives two words and the completion is the six that follow. From
random weights the job's loss falls in a few dozen steps (about 6.0 to 4.9 in 40 steps: LoRA
adapts the layers, not the random embeddings), which is what the demo is for: a job that runs,
reports progress and leaves an adapter.

The builders here are also the test suite's (tests/utils/builders.py): one tiny model
everywhere. torch, transformers and tokenizers (the worker extra) are imported when a model is
built, never with this module.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from cli.client import ApiFailure, Client, fail, say_error
from cli.files import upload_file
from cli.jobs import SUBMIT_FIELDS, follow
from cli.options import DEFAULT_URL, FieldMap, KeyOption, UrlOption

console = Console()

# The cycle the data walks round: each word is followed by exactly one other word. The words
# are frequent in the tokenizer's corpus, so each becomes a single BPE token.
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

DEMO_DIR = "loracle-demo"
# The one setting of the job the demo takes from its user.
DEMO_FIELDS = FieldMap({"hyperparameters.max_steps": "steps"})
# What the demo job trains: LoRA, named (no card needed for the advisor to choose), a few
# dozen steps at a rate far above a real run's so random weights visibly learn the cycle;
# about 5 s on two CPU cores.
DEMO_JOB: dict[str, Any] = {
    "variant": "lora",
    "max_steps": 40,
    "seq_len": 64,
    "learning_rate": 5e-3,
    "micro_batch": 4,
    "logging_steps": 2,
}


def walk(start: int, length: int) -> str:
    """``length`` words of the cycle from word ``start``."""
    return " ".join(CYCLE_WORDS[(start + i) % len(CYCLE_WORDS)] for i in range(length))


def prompt_completion(start: int) -> dict[str, str]:
    """One row of the task: two words of the cycle, then the six that follow."""
    return {
        "prompt": f"continue the sequence from {walk(start, 2)}:",
        "completion": " " + walk(start + 2, 6),
    }


def tokenizer_corpus() -> list[str]:
    rng = random.Random(1234)
    lines = []
    for _ in range(400):
        lines.append(walk(rng.randrange(len(CYCLE_WORDS)), 12))
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
) -> Any:
    """Train a byte-level BPE tokenizer offline and save it as a `PreTrainedTokenizerFast`.

    Byte-level, so any text tokenizes (no unknown characters). Special tokens: `<s>` (bos,
    added in front of every encoded string), `</s>` (eos), `<pad>` (unless `pad_token=False`,
    which tests use for the pad-equals-eos fallback), `<unk>`, and the ChatML markers. With
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
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
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


MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def demo_model(folder: Path) -> tuple[Path, bool]:
    """The demo's model in ``folder/model``, built unless a whole one is there: (path,
    built). Built in a temporary folder beside it and renamed, so an interrupted build never
    leaves a model that a later run would take for whole."""
    model = folder / "model"
    if all((model / name).is_file() for name in MODEL_FILES):
        return model, False
    folder.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=folder, prefix=".model-"))
    try:
        build_tiny_llama(building)
        if model.exists():  # a model folder missing files: from an older or broken run
            shutil.rmtree(model)
        building.replace(model)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return model, True


def demo_data(folder: Path, n_rows: int = 256) -> Path:
    """The task's rows as JSONL (same rows every run)."""
    rng = random.Random(0)
    path = folder / "train.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [prompt_completion(rng.randrange(len(CYCLE_WORDS))) for _ in range(n_rows)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def demo(
    ctx: typer.Context,
    steps: Annotated[int, typer.Option(help="Optimizer steps of the demo job")] = DEMO_JOB[
        "max_steps"
    ],
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the API's answers (file, job, then each event) one a line"
        ),
    ] = False,
) -> None:
    """Fine-tune a tiny local model on a sample task, offline, and follow the job.

    Builds the model and the data inside the service's model roots (run it on the service's
    machine), submits the job and follows it to the end.
    """
    from cli.logs import quiet_third_parties
    from loracle.settings import get_settings

    quiet_third_parties()
    # Nothing here needs the hub: should anything ask, it fails here rather than waiting on
    # a network that may not be there.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def say(text: str) -> None:
        if not as_json:  # with --json, stdout carries JSON only
            console.print(text, soft_wrap=True)

    with Client(url, api_key) as client:
        try:
            client.get("/v1/jobs", limit=1)  # the service is up and takes the key: before any build
        except ApiFailure as exc:
            fail(exc)
        folder = get_settings().allowed_model_roots[0] / DEMO_DIR
        try:
            model, built = demo_model(folder)
        except ImportError as exc:
            say_error(
                f"loracle demo builds its model with the worker's libraries ({exc.name} is "
                "missing): pip install 'loracle[worker]'"
            )
            raise typer.Exit(1) from None
        say(f"model: {escape(str(model))} ({'built' if built else 'reused'})")
        data = demo_data(folder)
        values = {**DEMO_JOB, "max_steps": steps, "model": str(model)}
        try:
            uploaded = upload_file(client, data)
            values["training_file"] = uploaded["id"]
            say(
                f"data: {escape(str(data))}, uploaded as {uploaded['id']} ({uploaded['rows']} rows)"
            )
            job = client.post("/v1/jobs", json=SUBMIT_FIELDS.body(values))
        except ApiFailure as exc:
            if any(p.get("field") == "model" for p in exc.problems):
                say_error(
                    f"the service refused {model}: run `loracle demo` on the service's machine "
                    "with its LORACLE_DATA_DIR / LORACLE_MODEL_ROOTS, so the model is built "
                    "where it looks"
                )
            fail(exc, DEMO_FIELDS, ctx)
        if as_json:
            print(json.dumps(uploaded))
            print(json.dumps(job))
        say(f"job: {job['id']}, {job['variant']}, {steps} steps")
        # follow's last line is the adapter's download command
        raise typer.Exit(follow(client, job["id"], as_json))
