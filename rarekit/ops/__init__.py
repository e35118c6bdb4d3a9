"""Kernel entry points: each op calls the compiled ``torch.ops.rarekit`` kernel where it serves the
tensor's device, and the reference otherwise. Arguments are validated by the user-facing wrappers
(``rarekit.counting``, ...), not here; fake kernels and autograd are registered next to each op.
"""
from rarekit.ops.count import count
from rarekit.ops.cross_entropy import (accumulator_dtype, cross_entropy_inplace, cross_entropy_reduced,
                                      cross_entropy_rows)
from rarekit.ops.gather import gather_rows, gather_segments_into, repeat_rows_into
from rarekit.ops.sampling import class_buckets, draw_from_buckets, draw_from_buckets_into
from rarekit.ops.sigmoid import sigmoid_loss

__all__ = ["accumulator_dtype", "class_buckets", "count", "cross_entropy_inplace", "cross_entropy_reduced",
           "cross_entropy_rows",
           "draw_from_buckets", "draw_from_buckets_into", "gather_rows", "gather_segments_into",
           "repeat_rows_into", "sigmoid_loss"]
