"""rla-convert: turn softmax-attention and Gated DeltaNet checkpoints into RLA / RDN models."""
__version__ = "0.1.0"
