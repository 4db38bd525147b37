from .naive import naive_recurrent_rdn

__all__ = ["naive_recurrent_rdn"]
