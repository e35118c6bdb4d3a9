"""Which rank holds which classes, the exchange of per-row statistics, and the input checks every
rank agrees on before any of them raises.

Each rank describes its inputs in a small int64 header: its rows N, its number of classes V_r, its
``vocab_start``, its logits dtype, a code for a bad local input, the loss keywords, and exact integer
checksums of the inputs that must be replicated (target, weight, logit_adjustment). Without
``vocab_start`` the headers are all-gathered first (the size exchange, a fixed-size collective, so
even ranks that disagree on N meet); with it, the header rides in front of the statistics block of the
one exchange. Either way every rank checks the same gathered headers in the same order and raises the
same error, so a bad input on one rank never leaves the others waiting in a collective.
"""
from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rarekit.counting import is_integer
from rarekit.ops._checks import first_out_of_range

PREFIX = "rarekit.distributed:"
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
HEADER = ("error", "detail", "rows", "classes", "vocab_start", "dtype", "options", "weight_length",
          "adjustment_length", "target_sum", "weight_sum", "adjustment_sum")
FIELD = {name: index for index, name in enumerate(HEADER)}

# A rank's own bad input (code -> exception, message with {detail}); the other ranks raise it too.
LOCAL_ERRORS = {
    1: (TypeError, "logits must be a floating-point tensor (float32, float64, bfloat16 or float16)"),
    2: (ValueError, "logits must be this rank's (N, V_local) slice of the vocabulary, a 2-D tensor; got "
                    "{detail} dimensions"),
    3: (ValueError, "the shard has {detail} rows but target has N = {rows}"),
    4: (ValueError, "the shard is not on the device of target"),
    5: (ValueError, "vocab_start must be an integer >= 0, got {detail}"),
    6: (ValueError, "classifier must be this rank's (V_local, D) rows of the LM head (2-D, D = hidden's last "
                    "dimension); got a tensor of {detail} dimensions or another D"),
    7: (TypeError, "classifier must have the dtype and device of hidden"),
    8: (ValueError, "bias must be None or this rank's (V_local,) slice, with the dtype and device of hidden"),
}
UNSHOWN = -2**63  # the detail of a vocab_start that is not an integer or too large for the header


def checksum(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Σ_i bits_i (2i + 1) in wrapping int64 arithmetic: exact, so equal on every rank that holds the
    same values, whatever the order of the sum. 0 for None."""
    if tensor is None:
        return torch.zeros((), dtype=torch.int64, device=device)
    flat = tensor.detach().reshape(-1).contiguous()
    if flat.is_floating_point():
        flat = flat.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()])
    positions = torch.arange(flat.numel(), device=flat.device, dtype=torch.int64)
    return (flat.long() * (2 * positions + 1)).sum().to(device)


def options_code(*options) -> int:
    """A code of the loss keywords: the ranks must pass the same ones."""
    return zlib.crc32(repr(options).encode())


@dataclass(frozen=True)
class Shards:
    """The group's vocabulary split: rank r holds [starts[r], starts[r] + sizes[r])."""

    group: object
    rank: int
    starts: tuple[int, ...]
    sizes: tuple[int, ...]

    @property
    def classes(self) -> int:
        return sum(self.sizes)

    @property
    def start(self) -> int:
        return self.starts[self.rank]

    @property
    def size(self) -> int:
        return self.sizes[self.rank]


def resolve_group(group):
    """(group, rank in it, its size), or None for a single process (no process group initialized)."""
    if group is None:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = dist.group.WORLD
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if rank < 0:
        raise ValueError(f"{PREFIX} this process (global rank {dist.get_rank()}) is not a member of `group`")
    return group, rank, world


def _dtensor_class():
    """torch's DTensor class, if its module is loaded (a tensor can only be a DTensor then)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def is_dtensor(value) -> bool:
    DTensor = _dtensor_class()
    return DTensor is not None and isinstance(value, DTensor)


def dtensor_shard(tensor, dim: int, name: str):
    """(local tensor, group, global offset along ``dim``) of a DTensor sharded on ``dim`` over one mesh
    dimension (and replicated over any others); ``to_local`` keeps autograd, so gradients flow back as
    DTensors."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    placements = tensor.placements
    sharded = [index for index, placement in enumerate(placements)
               if isinstance(placement, Shard) and placement.dim % tensor.dim() == dim]
    if len(sharded) != 1 or not all(isinstance(placement, Replicate)
                                    for index, placement in enumerate(placements) if index != sharded[0]):
        raise ValueError(f"{PREFIX} {name} must be a DTensor sharded on dimension {dim} (the vocabulary) over one "
                         f"mesh dimension and replicated over the others, got placements {placements}")
    _, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, placements)
    return tensor.to_local(), tensor.device_mesh.get_group(sharded[0]), offset[dim]


def replicated_local(value, name: str):
    """The local tensor of a replicated DTensor; anything else as given."""
    if not is_dtensor(value):
        return value
    from torch.distributed.tensor import Replicate

    if not all(isinstance(placement, Replicate) for placement in value.placements):
        raise ValueError(f"{PREFIX} {name} must be replicated on every rank, got a DTensor with placements "
                         f"{value.placements}")
    return value.to_local()


def vocab_start_error(vocab_start) -> tuple[int, int] | None:
    """(code, detail) of a ``vocab_start`` that is not an integer in [0, 2^62), or None; the detail is
    its value, or UNSHOWN where an int64 cannot carry it."""
    if vocab_start is None or (is_integer(vocab_start) and 0 <= vocab_start < 2**62):
        return None
    return 5, int(vocab_start) if is_integer(vocab_start) and vocab_start > -2**62 else UNSHOWN


def local_header(error: tuple[int, int] | None, rows: int, classes: int, vocab_start, dtype, code: int,
                 target: torch.Tensor, weight, adjustment) -> torch.Tensor:
    """This rank's (len(HEADER),) int64 header, on the device of target."""
    device = target.device
    host = [error[0] if error else 0, error[1] if error else 0, rows, classes,
            -1 if vocab_start is None or error else int(vocab_start), DTYPES.index(dtype) if dtype in DTYPES else -1,
            code, -1 if weight is None else weight.numel(), -1 if adjustment is None else adjustment.numel()]
    sums = torch.stack([checksum(target, device), checksum(weight, device), checksum(adjustment, device)])
    return torch.cat([torch.tensor(host, dtype=torch.int64, device=device), sums])


def all_gather_flat(block: torch.Tensor, group, world: int) -> torch.Tensor:
    """(world * len,): each rank's 1-D ``block``, in group-rank order, in one collective. torch >= 2.14
    has ``all_gather_single`` for every backend; before it, gloo has only the list form (into views of
    one buffer) and nccl ``all_gather_into_tensor``."""
    gathered = block.new_empty((world * block.numel(),))
    if hasattr(dist, "all_gather_single"):
        dist.all_gather_single(gathered, block, group=group)
    elif dist.get_backend(group) == "nccl":
        dist.all_gather_into_tensor(gathered, block, group=group)
    else:
        dist.all_gather(list(gathered.view(world, block.numel()).unbind(0)), block, group=group)
    return gathered


class Exchange:
    """One call's collectives: the size exchange (without ``vocab_start``), then :meth:`gather` of the
    statistics. ``start`` and ``size`` are this rank's range; ``shards``, every rank's, is known after
    the size exchange, or, with ``vocab_start``, once :meth:`gather` has checked the headers that came
    with the statistics (``local_error``: this rank's inputs are bad, it sends zeros and raises then)."""

    def __init__(self, group, rank: int, world: int, header: torch.Tensor, vocab_start, target: torch.Tensor,
                 ignore_index: int):
        self.group, self.rank, self.world, self.header = group, rank, world, header
        self.target, self.ignore_index = target, ignore_index
        self.sizes_exchanged = vocab_start is None
        self.shards: Shards  # every rank's: after the size exchange, or set by gather() with vocab_start
        if self.sizes_exchanged:
            self.shards = self._checked(self._all_gather(header).tolist())
            self.start, self.size, self.local_error = self.shards.start, self.shards.size, False
        else:
            self.local_error = bool(header[FIELD["error"]])
            self.start = 0 if self.local_error else int(vocab_start)
            self.size = int(header[FIELD["classes"]])

    def gather(self, statistics: torch.Tensor | None, rows: int, accumulate: torch.dtype,
               count: int) -> torch.Tensor:
        """(world, count, rows) statistics of every rank, in group-rank order: one collective
        (``statistics`` None: this rank had a bad input and sends zeros)."""
        if statistics is None:
            statistics = torch.zeros((count, rows), dtype=accumulate, device=self.target.device)
        if self.sizes_exchanged:
            return self._all_gather(statistics.reshape(-1)).view(self.world, count, rows)
        header = self.header.to(statistics.device).view(accumulate)
        gathered = self._all_gather(torch.cat([header, statistics.reshape(-1)]))
        self.shards = self._checked(gathered[:, :header.numel()].contiguous().view(torch.int64).tolist())
        return gathered[:, header.numel():].view(self.world, count, rows)

    def _all_gather(self, block: torch.Tensor) -> torch.Tensor:
        """(world, len) of every rank's 1-D ``block``."""
        return all_gather_flat(block, self.group, self.world).view(self.world, block.numel())

    def _checked(self, headers: list[list[int]]) -> Shards:
        """The shards the gathered headers describe; raises, identically on every rank, if they
        disagree or any rank reported a bad input."""
        column = {name: [header[index] for header in headers] for name, index in FIELD.items()}
        for rank, code in enumerate(column["error"]):
            if code:
                error, message = LOCAL_ERRORS[code]
                detail = column["detail"][rank]
                shown = "another value" if detail == UNSHOWN else detail
                raise error(f"{PREFIX} rank {rank} of the group: "
                            + message.format(detail=shown, rows=column["rows"][rank]))
        if len(set(column["rows"])) > 1:
            raise ValueError(f"{PREFIX} the ranks disagree on the number of rows N (per group rank: "
                             f"{column['rows']}): target and the rows of logits or hidden must be the same on every "
                             "rank")
        if len(set(column["dtype"])) > 1:
            names = [str(DTYPES[code]) if code >= 0 else "?" for code in column["dtype"]]
            raise TypeError(f"{PREFIX} the ranks' inputs have different dtypes (per group rank: {names})")
        if len(set(column["options"])) > 1:
            raise ValueError(f"{PREFIX} the loss keywords differ across ranks: every rank must pass the same "
                             "ignore_index, reduction, label_smoothing, smoothing_mode, focal_gamma, z_loss, softcap")
        sizes = tuple(column["classes"])
        expected = tuple(sum(sizes[:rank]) for rank in range(len(sizes)))
        given = column["vocab_start"]
        if given[0] >= 0 and tuple(given) != expected:
            raise ValueError(f"{PREFIX} the shards disagree with vocab_start: the ranks hold {list(sizes)} classes "
                             f"and gave vocab_start {given}; shards are contiguous vocabulary ranges in group-rank "
                             f"order, so vocab_start must be {list(expected)}")
        if len(set(column["target_sum"])) > 1:
            raise ValueError(f"{PREFIX} target differs across ranks: it holds global class ids and must be the same "
                             "on every rank (replicated)")
        classes = sum(sizes)
        for name in ("weight", "adjustment"):
            label = "weight" if name == "weight" else "logit_adjustment"
            lengths = column[f"{name}_length"]
            if len(set(lengths)) > 1 or len(set(column[f"{name}_sum"])) > 1:
                raise ValueError(f"{PREFIX} {label} differs across ranks: it must be the same full-vocabulary "
                                 "vector on every rank (replicated)")
            if lengths[0] >= 0 and lengths[0] != classes:
                raise ValueError(f"{PREFIX} {label} must have shape ({classes},) (one value per class of the global "
                                 f"vocabulary, {list(sizes)} over the ranks), got ({lengths[0]},)")
        found = first_out_of_range(self.target, classes, self.ignore_index)
        if found is not None:
            raise IndexError(f"{PREFIX} target[{found[0]}] = {found[1]} is out of range for the {classes} classes of "
                             f"the global vocabulary (and is not ignore_index={self.ignore_index})")
        return Shards(self.group, self.rank, expected, sizes)
