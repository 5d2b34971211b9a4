"""Universal Logit Distillation (ULD): cross-tokenizer knowledge distillation for LLMs."""

__version__ = "0.1.0"
