"""Every registered ``torch.ops.rarekit`` op, called with each argument wrong (dtype, size, shape,
device, value), must raise a clean Python exception (ValueError, TypeError or IndexError) before it
touches memory: never a crash, never a silently returned result.

The calls run in a child process (this file run as a script), so that a segfault or an abort is
observed and fails the test, naming the call it died in; after a crash a fresh child goes on from the
next call, so one process normally makes them all. Each op's valid call comes first, so that a
refused bad call cannot pass for a broken setup.
Wrong-device calls are added where a GPU is visible.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

CLEAN_ERRORS = ("ValueError", "TypeError", "IndexError")
START, RESULT = "START ", "RESULT "


def replaced(args: tuple, index: int, value) -> tuple:
    return args[:index] + (value,) + args[index + 1:]


def wrong_dtypes(tensor: torch.Tensor, dtypes) -> list:
    """(label, tensor) for ``tensor`` cast to each of ``dtypes``."""
    return [(f"dtype {dtype}", tensor.to(dtype)) for dtype in dtypes]


def wrong_sizes(tensor: torch.Tensor) -> list:
    """(label, tensor): one entry fewer and one more along dim 0, an extra trailing dim, the same
    number of elements in another shape, empty, and a 0-dim tensor."""
    variants = [("one more along dim 0", torch.cat([tensor, tensor[:1]])),
                ("extra trailing dim", tensor.unsqueeze(-1)),
                ("empty", tensor[:0]),
                ("0-dim", tensor.reshape(-1)[0].clone())]
    if tensor.shape[0] > 1:
        variants.append(("one fewer along dim 0", tensor[:-1]))
    variants.append(("same numel, other shape",
                     tensor.reshape(-1) if tensor.dim() > 1 else tensor.reshape(1, -1)))
    return variants


def argument_variants(valid: tuple, index: int, name: str, dtypes=(), sizes: bool = True) -> list:
    """(case name, args) with argument ``index`` (a tensor) given a wrong dtype or size, and, where
    a GPU is visible, on the other device than the rest."""
    tensor = valid[index]
    cases = [(f"{name}: {label}", replaced(valid, index, value)) for label, value in wrong_dtypes(tensor, dtypes)]
    if sizes:
        cases += [(f"{name}: {label}", replaced(valid, index, value)) for label, value in wrong_sizes(tensor)]
    if torch.cuda.is_available():
        cases.append((f"{name}: alone on cuda", replaced(valid, index, tensor.cuda())))
        on_cuda = tuple(arg.cuda() if isinstance(arg, torch.Tensor) else arg for arg in valid)
        cases.append((f"{name}: alone on cpu", replaced(on_cuda, index, tensor)))
    return cases


FLOATS = (torch.float32,)
NOT_FLOAT = (torch.int64, torch.int32, torch.bool, torch.complex64)
NOT_INT64 = (torch.int32, torch.float32, torch.bool)


def count_cases():
    ids = torch.randint(0, 5, (3, 4))
    weights = torch.rand(3, 4)
    valid = (ids, 5, None, weights, True)
    unweighted = (ids, 5, None, None, True)
    cases = argument_variants(valid, 0, "ids", (torch.float32, torch.bool, torch.uint64, torch.complex64), sizes=False)
    cases += argument_variants(unweighted, 0, "ids (unweighted)", (torch.float64, torch.bool, torch.uint64),
                               sizes=False)
    cases += argument_variants(valid, 3, "weights", NOT_FLOAT + (torch.uint8,))
    cases += [
        ("num_bins: -1", replaced(valid, 1, -1)),
        ("num_bins: -1, unweighted", replaced(unweighted, 1, -1)),
        ("ids: 7 outside [0, 5), check", replaced(valid, 0, torch.tensor([[1, 7, 2, 0]] * 3))),
        ("ids: negative, num_bins 0, check", (torch.tensor([-2]), 0, None, None, True)),
        ("weights: transposed shape", replaced(valid, 3, weights.t())),
    ]
    return valid, cases


def class_buckets_cases():
    valid = (torch.randint(0, 4, (10,)), 4)
    cases = argument_variants(valid, 0, "codes", (torch.float32, torch.bool, torch.uint64), sizes=False)
    cases += [("codes: 2-D", replaced(valid, 0, valid[0].reshape(2, 5))),
              ("codes: 0-dim", replaced(valid, 0, valid[0][0].clone())),
              ("num_classes: -1", replaced(valid, 1, -1)),
              ("num_classes: 2^63 - 1", replaced(valid, 1, (1 << 63) - 1))]
    return valid, cases


def draw_data_cases(valid: tuple, with_total: bool) -> list:
    """Inconsistent offsets/draw_counts (and total) for draw_from_buckets(_into); valid draws 2 of 6."""
    order, offsets, draw_counts = valid[:3]

    def draw(offsets=offsets, draw_counts=draw_counts, order=order, replacement=True):
        total = int(draw_counts.sum()) if draw_counts.numel() and abs(int(draw_counts.sum())) < 1 << 20 else 2
        if with_total:  # (order, offsets, draw_counts, total, seed, replacement, check)
            return (order, offsets, draw_counts, total, 7, replacement, True)
        return (order, offsets, draw_counts, 7, replacement, torch.empty(total, dtype=torch.int64), True)

    big = 1 << 62
    return [
        ("offsets[0] != 0", draw(offsets=torch.tensor([1, 2, 2, 6]))),
        ("offsets decreasing", draw(offsets=torch.tensor([0, 3, 2, 6]))),
        ("offsets[-1] past order", draw(offsets=torch.tensor([0, 2, 2, 7]))),
        ("offsets far past order", draw(offsets=torch.tensor([0, 2, 2, big]))),
        ("offsets negative", draw(offsets=torch.tensor([0, -5, 2, 6]))),
        ("order shorter than offsets say", draw(order=order[:3])),
        ("draw_counts negative", draw(draw_counts=torch.tensor([-1, 0, 3]))),
        ("with replacement from an empty bucket", draw(draw_counts=torch.tensor([1, 1, 0]))),
        ("without replacement, more than the bucket", draw(draw_counts=torch.tensor([3, 0, 0]), replacement=False)),
        ("draw_counts overflowing int64", draw(draw_counts=torch.tensor([big, 0, big]))),
    ]


def draw_from_buckets_cases():
    order, offsets, draw_counts = torch.arange(6), torch.tensor([0, 2, 2, 6]), torch.tensor([1, 0, 1])
    valid = (order, offsets, draw_counts, 2, 7, True, True)
    cases = []
    for index, name in enumerate(("order", "offsets", "draw_counts")):
        cases += argument_variants(valid, index, name, NOT_INT64, sizes=False)
        cases.append((f"{name}: 2-D", replaced(valid, index, valid[index].unsqueeze(0))))
    cases += [
        ("offsets: one entry too many", replaced(valid, 1, torch.tensor([0, 2, 2, 6, 6]))),
        ("offsets: one entry too few", replaced(valid, 1, torch.tensor([0, 2, 6]))),
        ("offsets: empty", replaced(valid, 1, offsets[:0])),
        ("draw_counts: one entry too many", replaced(valid, 2, torch.tensor([1, 0, 1, 0]))),
        ("total: 3 for 2 draws", replaced(valid, 3, 3)),
        ("total: 1 for 2 draws", replaced(valid, 3, 1)),
        ("total: -1", replaced(valid, 3, -1)),
        ("total: 0 for 2 draws", replaced(valid, 3, 0)),
    ]
    cases += draw_data_cases(valid, with_total=True)
    return valid, cases


def draw_from_buckets_into_cases():
    order, offsets, draw_counts = torch.arange(6), torch.tensor([0, 2, 2, 6]), torch.tensor([1, 0, 1])
    valid = (order, offsets, draw_counts, 7, True, torch.empty(2, dtype=torch.int64), True)
    cases = []
    for index, name in ((0, "order"), (1, "offsets"), (2, "draw_counts"), (5, "out")):
        cases += argument_variants(valid, index, name, NOT_INT64, sizes=False)
        cases.append((f"{name}: 2-D", replaced(valid, index, valid[index].unsqueeze(0))))
    cases += [
        ("out: 3 entries for 2 draws", replaced(valid, 5, torch.empty(3, dtype=torch.int64))),
        ("out: 1 entry for 2 draws", replaced(valid, 5, torch.empty(1, dtype=torch.int64))),
        ("out: non-contiguous", replaced(valid, 5, torch.empty(4, dtype=torch.int64)[::2])),
        ("offsets: one entry too few", replaced(valid, 1, torch.tensor([0, 2, 6]))),
    ]
    cases += draw_data_cases(valid, with_total=False)
    return valid, cases


def cross_entropy_inputs():
    """(logits, target, weight, logit_adjustment, target_margin) of 3 rows and 5 classes: none is the 4 row
    terms."""
    rows, classes = 3, 5
    return (torch.randn(rows, classes), torch.randint(0, classes, (rows,)), torch.rand(classes),
            torch.randn(classes), torch.rand(classes))


def cross_entropy_input_cases(valid: tuple) -> list:
    """Wrong logits, target, weight, logit_adjustment and target_margin (arguments 0-4 of every cross-entropy
    op)."""
    logits, target = valid[0], valid[1]
    cases = argument_variants(valid, 0, "logits", (torch.int64, torch.bool, torch.complex64), sizes=False)
    cases += [("logits: 1-D", replaced(valid, 0, logits[0].clone())),
              ("logits: 0-dim", replaced(valid, 0, logits[0, 0].clone())),
              ("logits: one class fewer", replaced(valid, 0, logits[:, :-1].clone())),
              ("logits: one row fewer", replaced(valid, 0, logits[:-1].clone()))]
    cases += argument_variants(valid, 1, "target", (torch.float32, torch.bool))
    cases += [("target: 5 outside 5 classes", replaced(valid, 1, torch.tensor([0, 5, 1]))),
              ("target: -1 (not ignore_index)", replaced(valid, 1, torch.tensor([0, -1, 1])))]
    cases += argument_variants(valid, 2, "weight", NOT_FLOAT)
    cases += argument_variants(valid, 3, "logit_adjustment", NOT_FLOAT)
    cases += argument_variants(valid, 4, "target_margin", NOT_FLOAT)
    return cases


def cross_entropy_forward_cases():
    valid = (*cross_entropy_inputs(), -100, 0.1, False, 0.0, 0.0, True)
    return valid, cross_entropy_input_cases(valid)


def cross_entropy_forward_inplace_cases():
    logits, target, weight, adjust, margin = cross_entropy_inputs()
    valid = (logits, target, weight, adjust, margin, torch.ones(1), -100, 0.1, False, 0.0, 0.0, True)
    cases = cross_entropy_input_cases(valid)
    cases += argument_variants(valid, 5, "grad_scale", NOT_FLOAT)
    cases.append(("logits: non-contiguous", replaced(valid, 0, torch.randn(5, 3).t())))
    return valid, cases


def cross_entropy_backward_cases():
    logits, target, weight, adjust, margin = cross_entropy_inputs()
    row_terms = torch.ops.rarekit.cross_entropy_forward(logits, target, weight, adjust, margin, -100, 0.1, False, 0.0,
                                                         0.0, True)[1]
    valid = (torch.ones(3), logits, target, weight, adjust, margin, row_terms, -100, 0.1, False, 0.0, 0.0)
    shifted = (valid[1],) + valid[2:6] + (valid[0],) + valid[6:]  # logits ... target_margin first, as forward
    cases = [(name, (args[5],) + args[:5] + args[6:]) for name, args in cross_entropy_input_cases(shifted)]
    cases += argument_variants(valid, 0, "grad_losses", NOT_FLOAT)
    cases += argument_variants(valid, 6, "row_terms", (torch.float64, torch.bfloat16, torch.int32))
    cases.append(("row_terms: rows and terms swapped", replaced(valid, 6, row_terms.t().contiguous())))
    return valid, cases


def cross_entropy_reduced_cases():
    valid = (*cross_entropy_inputs(), torch.rand(3), -100, 0.1, False, 0.0, 0.0, 1, True, True)
    cases = cross_entropy_input_cases(valid)
    cases += argument_variants(valid, 5, "sample_weight", NOT_FLOAT)
    cases += [("reduction: 0 (none)", replaced(valid, 11, 0)), ("reduction: 3", replaced(valid, 11, 3)),
              ("target: 5 outside 5 classes, reduction sum",
               replaced(replaced(valid, 1, torch.tensor([0, 5, 1])), 11, 2))]
    return valid, cases


def vocab_parallel_statistics_cases():
    """A shard of 5 classes from global class 7: targets outside it belong to other ranks (no error)."""
    logits, target, weight, adjust, _ = cross_entropy_inputs()
    valid = (logits, target + 5, weight, adjust, 7, -100, 0.1, False)
    cases = argument_variants(valid, 0, "logits", (torch.int64, torch.bool, torch.complex64), sizes=False)
    cases += [("logits: 1-D", replaced(valid, 0, logits[0].clone())),
              ("logits: 0-dim", replaced(valid, 0, logits[0, 0].clone())),
              ("logits: one row fewer", replaced(valid, 0, logits[:-1].clone()))]
    cases += argument_variants(valid, 1, "target", (torch.float32, torch.bool))
    cases += argument_variants(valid, 2, "weight", NOT_FLOAT)
    cases += argument_variants(valid, 3, "logit_adjustment", NOT_FLOAT)
    cases += [("vocab_start: -1", replaced(valid, 4, -1)),
              ("vocab_start: past int64 with the shard", replaced(valid, 4, 2**63 - 3)),
              ("label_smoothing: 1.5", replaced(valid, 6, 1.5)),
              ("label_smoothing: -0.1", replaced(valid, 6, -0.1))]
    return valid, cases


def sigmoid_operand_cases(valid: tuple, index: int, name: str) -> list:
    """A broadcast operand (weight, pos_weight, alpha_tensor) of the wrong dtype, or of a shape that does
    not broadcast to the (3, 5) input (a 0-dim or (1, 5) one would)."""
    cases = argument_variants(valid, index, name, NOT_FLOAT, sizes=False)
    cases += [(f"{name}: {label}", replaced(valid, index, value)) for label, value in (
        ("(4,)", torch.rand(4)), ("(3,)", torch.rand(3)), ("(5, 1)", torch.rand(5, 1)), ("(2, 3, 5)", torch.rand(2, 3, 5)),
        ("(0,)", torch.rand(0)))]
    return cases


def sigmoid_input_cases(valid: tuple, offset: int) -> list:
    """Wrong input, target, operands and scalars of a sigmoid op whose input is argument ``offset``."""
    cases = argument_variants(valid, offset, "input", (torch.int64, torch.bool, torch.complex64))
    cases += argument_variants(valid, offset + 1, "target", (torch.float64, torch.float16, torch.int64, torch.bool))
    for index, name in ((2, "weight"), (3, "pos_weight"), (4, "alpha_tensor")):
        cases += sigmoid_operand_cases(valid, offset + index, name)
    scalars = {"alpha and alpha_tensor both": (offset + 5, 0.25), "gamma_pos: -1": (offset + 6, -1.0),
               "gamma_neg: inf": (offset + 7, float("inf")), "clip: 1": (offset + 8, 1.0),
               "clip: -0.5": (offset + 8, -0.5), "reduction: 3": (offset + 10, 3)}
    cases += [(case, replaced(valid, index, value)) for case, (index, value) in scalars.items()]
    cases.append(("alpha: nan", replaced(replaced(valid, offset + 4, None), offset + 5, float("nan"))))
    return cases


def sigmoid_loss_forward_cases():
    valid = (torch.randn(3, 5), torch.rand(3, 5), torch.rand(5), torch.rand(3, 1), torch.rand(5), None, 2.0, 1.0, 0.05,
             False, 1, True)
    return valid, sigmoid_input_cases(valid, 0)


def sigmoid_loss_backward_cases():
    valid = (torch.rand(3, 5), torch.randn(3, 5), torch.rand(3, 5), torch.rand(5), torch.rand(3, 1), torch.rand(5), None,
             2.0, 1.0, 0.05, True, 0, [True, True])
    cases = sigmoid_input_cases(valid, 1)
    cases += argument_variants(valid, 0, "grad_loss (reduction none)", NOT_FLOAT)
    reduced = replaced(valid, 11, 1)
    cases += [("grad_loss (reduction mean): (3, 5)", reduced), ("grad_loss (reduction mean): (0,)",
                                                                 replaced(reduced, 0, torch.rand(0)))]
    return valid, cases


def gather_rows_cases():
    valid = (torch.randn(5, 3), torch.tensor([0, 4, 2]), True)
    cases = argument_variants(valid, 1, "indices", (torch.float32, torch.bool), sizes=False)
    cases += [("indices: 5 outside 5 rows", replaced(valid, 1, torch.tensor([0, 5]))),
              ("indices: -1", replaced(valid, 1, torch.tensor([0, -1]))),
              ("indices: huge", replaced(valid, 1, torch.tensor([1 << 62]))),
              ("source: 0-dim", replaced(valid, 0, torch.tensor(1.0)))]
    return valid, cases


def repeat_rows_into_cases():
    valid = (torch.randn(3, 2), torch.tensor([2, 0, 1]), torch.empty(3, 2), True)
    cases = argument_variants(valid, 1, "repeats", (torch.float32, torch.int32, torch.bool))
    cases += argument_variants(valid, 2, "out", (torch.float64, torch.int64), sizes=False)
    cases += [("repeats: -1", replaced(valid, 1, torch.tensor([2, -1, 2]))),
              ("repeats: sum 4 for 3 rows", replaced(valid, 1, torch.tensor([2, 1, 1]))),
              ("repeats: sum 2 for 3 rows", replaced(valid, 1, torch.tensor([1, 0, 1]))),
              ("repeats: huge", replaced(valid, 1, torch.tensor([1 << 62, 1 << 62, 1 << 62]))),
              ("out: one row more", replaced(valid, 2, torch.empty(4, 2))),
              ("out: other row shape", replaced(valid, 2, torch.empty(3, 3))),
              ("out: not contiguous", replaced(valid, 2, torch.empty(2, 3).t())),
              ("out: a view of source", (valid[0], torch.tensor([1, 1, 1]), valid[0], True)),
              ("source: 0-dim", replaced(valid, 0, torch.tensor(1.0)))]
    return valid, cases


def gather_segments_into_cases():
    # segments 1 and 3 of a 6-row values with offsets [0, 2, 2, 5, 6]: rows 2:2 (empty), 5:6, 0:2
    valid = (torch.randn(6, 2), torch.tensor([2, 5, 0]), torch.tensor([0, 0, 1, 3]), torch.empty(3, 2), True)
    cases = argument_variants(valid, 1, "starts", (torch.float32, torch.int32, torch.bool), sizes=False)
    cases += argument_variants(valid, 2, "out_offsets", (torch.float32, torch.int32), sizes=False)
    cases += argument_variants(valid, 3, "out", (torch.float64, torch.int64), sizes=False)
    cases += [("starts: one fewer", replaced(valid, 1, torch.tensor([2, 5]))),
              ("starts: 2-D", replaced(valid, 1, torch.tensor([[2, 5, 0]]))),
              ("starts: -1", replaced(valid, 1, torch.tensor([2, -1, 0]))),
              ("starts: run past values", replaced(valid, 1, torch.tensor([2, 6, 0]))),
              ("starts: huge", replaced(valid, 1, torch.tensor([2, 5, (1 << 63) - 1]))),
              ("out_offsets: decreasing", replaced(valid, 2, torch.tensor([0, 1, 0, 3]))),
              ("out_offsets: past out", replaced(valid, 2, torch.tensor([0, 0, 1, 4]))),
              ("out_offsets: negative", replaced(valid, 2, torch.tensor([-1, 0, 1, 3]))),
              ("out_offsets: huge span", replaced(valid, 2, torch.tensor([-(1 << 62), 1 << 62, 1, 3]))),
              ("out: other row shape", replaced(valid, 3, torch.empty(3, 3))),
              ("out: not contiguous", replaced(valid, 3, torch.empty(2, 3).t())),
              ("out: a view of values", replaced(valid, 3, valid[0][:3])),
              ("values: 0-dim", replaced(valid, 0, torch.tensor(1.0)))]
    return valid, cases


def linear_cross_entropy_forward_cases():
    rows, hidden_size, classes = 4, 3, 5
    valid = (torch.randn(rows, hidden_size), torch.randn(classes, hidden_size), torch.randn(classes),
             torch.randint(0, classes, (rows,)), torch.rand(classes), torch.randn(classes), torch.rand(classes),
             torch.ones(1), -100, 0.1, False, 0.0, 0.0, None, 2, [True] * 4, True)
    cases = []
    for index, name in ((0, "hidden"), (1, "classifier")):
        cases += argument_variants(valid, index, name, (torch.int64, torch.bool), sizes=False)
        cases += [(f"{name}: 1-D", replaced(valid, index, valid[index][0].clone())),
                  (f"{name}: one feature fewer", replaced(valid, index, valid[index][:, :-1].clone()))]
    cases += argument_variants(valid, 2, "bias", NOT_FLOAT)
    cases += argument_variants(valid, 3, "target", (torch.float32, torch.bool))
    cases.append(("target: 5 outside 5 classes", replaced(valid, 3, torch.tensor([0, 5, 1, 2]))))
    cases += argument_variants(valid, 4, "weight", NOT_FLOAT)
    cases += argument_variants(valid, 5, "logit_adjustment", NOT_FLOAT)
    cases += argument_variants(valid, 6, "target_margin", NOT_FLOAT)
    cases += [(name, args) for name, args in argument_variants(valid, 7, "grad_scale", NOT_FLOAT)
              if "one more along dim 0" not in name]  # (1,) and (rows,) are both valid: (2,) is neither
    cases += [("grad_scale: 3 entries for 4 rows", replaced(valid, 7, torch.ones(3))),
              ("chunk_rows: 0", replaced(valid, 14, 0)),
              ("chunk_rows: -1", replaced(valid, 14, -1))]
    return valid, cases


CASES = {
    "count": count_cases,
    "class_buckets": class_buckets_cases,
    "draw_from_buckets": draw_from_buckets_cases,
    "draw_from_buckets_into": draw_from_buckets_into_cases,
    "cross_entropy_forward": cross_entropy_forward_cases,
    "cross_entropy_forward_inplace": cross_entropy_forward_inplace_cases,
    "cross_entropy_backward": cross_entropy_backward_cases,
    "cross_entropy_reduced": cross_entropy_reduced_cases,
    "gather_rows": gather_rows_cases,
    "gather_segments_into": gather_segments_into_cases,
    "repeat_rows_into": repeat_rows_into_cases,
    "linear_cross_entropy_forward": linear_cross_entropy_forward_cases,
    "sigmoid_loss_forward": sigmoid_loss_forward_cases,
    "sigmoid_loss_backward": sigmoid_loss_backward_cases,
    "vocab_parallel_statistics": vocab_parallel_statistics_cases,
}


def registered_ops() -> list[str]:
    import rarekit  # noqa: F401  loads rarekit._C, which registers the ops
    return sorted(name.split("::", 1)[1].split(".")[0] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("rarekit::"))


def all_calls() -> list[tuple[str, str, tuple]]:
    """(op, case, args) of every registered op with cases: its valid call first, then the bad ones."""
    torch.manual_seed(0)
    calls = []
    for op_name in registered_ops():
        if op_name in CASES:
            valid, cases = CASES[op_name]()
            calls += [(op_name, case, args) for case, args in [("valid call", valid)] + cases]
    return calls


def run_calls(first: int) -> None:
    """The child: makes the calls from number ``first`` on, printing START before each (so that a
    crash names it) and RESULT after."""
    for number, (op_name, case, args) in enumerate(all_calls()):
        if number < first:
            continue
        print(START + json.dumps({"number": number, "op": op_name, "case": case}), flush=True)
        try:
            getattr(torch.ops.rarekit, op_name)(*args)
            outcome = {"number": number, "op": op_name, "case": case, "raised": None}
        except Exception as error:  # noqa: BLE001  the class is what is judged
            outcome = {"number": number, "op": op_name, "case": case,
                       "raised": [cls.__name__ for cls in type(error).__mro__],
                       "message": str(error).splitlines()[0][:200] if str(error) else ""}
        print(RESULT + json.dumps(outcome), flush=True)


@pytest.fixture(scope="module")
def results_by_op():
    """Runs every call in children: one child makes them all, and after a crash a new child goes on
    from the next call. {op: [result]}, a crashed call's result holding its exit status."""
    compiled = pytest.importorskip("rarekit._C", reason="the compiled kernels are not built")
    source = os.path.dirname(os.path.dirname(compiled.__file__))  # the rarekit this test imported
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    results, first = [], 0
    while True:
        child = subprocess.run([sys.executable, __file__, str(first)], capture_output=True, text=True, env=env,
                               timeout=600)
        lines = child.stdout.splitlines()
        results += [json.loads(line[len(RESULT):]) for line in lines if line.startswith(RESULT)]
        started = [json.loads(line[len(START):]) for line in lines if line.startswith(START)]
        if child.returncode == 0:
            break
        assert started and (not results or started[-1]["number"] > results[-1]["number"]), (
            f"the child failed outside any call (exit status {child.returncode}):\n{child.stderr[-3000:]}")
        results.append({**started[-1], "crashed": child.returncode, "stderr": child.stderr[-1000:]})
        first = started[-1]["number"] + 1
    by_op: dict[str, list[dict]] = {}
    for result in results:
        by_op.setdefault(result["op"], []).append(result)
    return by_op


def test_every_registered_op_has_cases():
    pytest.importorskip("rarekit._C", reason="the compiled kernels are not built")
    missing = [name for name in registered_ops() if name not in CASES]
    assert not missing, f"torch.ops.rarekit ops without bad-argument cases in {__file__}: {missing}"


def describe(result: dict) -> str:
    if "crashed" in result:
        return f"{result['case']}: CRASHED the process (exit status {result['crashed']}): {result['stderr'][-300:]}"
    if result["raised"] is None:
        return f"{result['case']}: returned without an error"
    return f"{result['case']}: {result['raised'][0]}: {result['message']}"


@pytest.mark.parametrize("op_name", sorted(CASES))
def test_each_wrong_argument_raises_a_clean_error(op_name, results_by_op):
    if op_name not in results_by_op:
        pytest.skip(f"rarekit::{op_name} is not registered in this build")
    valid, *bad = results_by_op[op_name]
    assert valid.get("raised", "crashed") is None, f"the valid call of rarekit::{op_name} failed: {describe(valid)}"
    assert len(bad) >= 5
    unclean = [describe(result) for result in bad
               if "crashed" in result or result["raised"] is None or not set(CLEAN_ERRORS) & set(result["raised"])]
    assert not unclean, (f"rarekit::{op_name}: {len(unclean)} of {len(bad)} bad calls did not raise ValueError, "
                         "TypeError or IndexError:\n" + "\n".join(unclean))


@pytest.mark.parametrize("op_name", ["draw_from_buckets", "draw_from_buckets_into"])
def test_reference_path_refuses_what_the_kernels_refuse(op_name, results_by_op):
    """The pure-PyTorch path (no extension, or set_backend("reference")) raises the kernels' error class
    for every inconsistent offsets/draw_counts, not an out-of-range read or a silently wrong draw."""
    import rarekit

    kernel_results = {result["case"]: result for result in results_by_op.get(op_name, [])}
    if not kernel_results:
        pytest.skip(f"rarekit::{op_name} is not registered in this build")
    valid = CASES[op_name]()[0]
    data_cases = draw_data_cases(valid, with_total=op_name == "draw_from_buckets")
    wrapper = getattr(rarekit.ops, op_name)
    rarekit.set_backend("reference")
    try:
        for case, args in data_cases:
            with pytest.raises(ValueError, match="rarekit.draw_from_buckets: ") as error:
                wrapper(*args)
            assert kernel_results[case]["raised"][0] == type(error.value).__name__, case
    finally:
        rarekit.set_backend("native")


@pytest.mark.cuda
@pytest.mark.parametrize("with_total", [True, False])
def test_cuda_draws_refuse_or_never_select_another_row(with_total):
    """On CUDA, check=True raises the CPU's ValueError; check=False (no host sync) writes INT64_MIN where
    the arguments are inconsistent, which every index op rejects, never the index of another row."""
    import rarekit

    valid = CASES["draw_from_buckets" if with_total else "draw_from_buckets_into"]()[0]
    for case, args in draw_data_cases(valid, with_total):
        on_cuda = tuple(arg.cuda() if isinstance(arg, torch.Tensor) else arg for arg in args)
        op = rarekit.ops.draw_from_buckets if with_total else rarekit.ops.draw_from_buckets_into
        with pytest.raises(ValueError, match="rarekit.draw_from_buckets: "):
            op(*args)
        with pytest.raises(ValueError, match="rarekit.draw_from_buckets: "):
            op(*on_cuda)
        unchecked = on_cuda[:-1] + (False,)
        drawn = op(*unchecked) if with_total else (op(*unchecked), unchecked[5])[1]
        order = args[0]
        torch.cuda.synchronize()
        for value in drawn.cpu().tolist():
            assert value == -(2**63) or (0 <= value < order.numel() and value in order.tolist()), (case, value)


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_calls(int(sys.argv[1]))
