"""Kernel entry points: each op calls the compiled ``torch.ops.rarekit`` kernel where it serves the
tensor's device, and the reference otherwise. Arguments are validated by the user-facing wrappers
(``rarekit.counting``, ...), not here; fake kernels and autograd are registered next to each op.
"""
from rarekit.ops.count import count

__all__ = ["count"]
