"""The worker: runs LoRA / QLoRA / DoRA / LoRA+ fine-tuning jobs.

Importing this package must stay cheap: torch, transformers, peft and
bitsandbytes are imported inside the functions that need them, so the API can
import torch-free helpers from here (data-file validation) without the
training stack installed.
"""
