"""Quality measurements shared by `rla-convert eval` and the distillation recipes."""
from .agreement import greedy_agreement
from .passkey import passkey_accuracy
from .perplexity import perplexity
from .text import load_text, tokenize_text

__all__ = ["greedy_agreement", "load_text", "passkey_accuracy", "perplexity", "tokenize_text"]
