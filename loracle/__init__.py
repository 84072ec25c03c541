"""loracle: which LoRA variant to use on your hardware, whether it fits, and a
service that runs the job. This package holds what the API and the worker
share: settings, the job store, and the command line."""

__version__ = "0.1.0"
