from .naive import naive_recurrent_rla

__all__ = ["naive_recurrent_rla"]
