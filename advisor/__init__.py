"""The advisor: which LoRA variant to use, whether it fits, and with what settings.

Pure and fast: no torch, no web framework, no queue is imported here or below
(a test checks ``sys.modules``). The API and the worker both import it.
"""
