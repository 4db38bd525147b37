"""Benchmarks behind `rla-convert bench`: ``kernels`` (the ops, timed side by side with fla and
FlashAttention; ``plot`` renders them) and ``model`` (converted models against their teachers).

Nothing is imported here: each benchmark pulls in torch, fla or matplotlib only when it runs.
"""
