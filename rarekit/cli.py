"""The ``rarekit`` command line (also ``python -m rarekit``).

``rarekit count FILE...`` counts the ids of ``.npy`` arrays, raw ``.bin`` token files or whitespace-split
``.txt`` files; ``rarekit demo`` runs an imbalance study (:mod:`rarekit.study.demo`) and counts the
sample corpus shipped in the package. Each subcommand
is registered by an ``add_*_command`` function that sets its ``run`` callable.
"""
from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rarekit._files import write_text_atomic
from rarekit._memory import available_memory
from rarekit.counting import count, max_id, rare_ids
from rarekit.plots import plot_frequencies
from rarekit.study.lm import DEFAULT_EPOCHS as LM_DEFAULT_EPOCHS
from rarekit.weights import SCHEMES, class_weights

FORMATS = ("npy", "bin", "txt")
BIN_DTYPES = ("uint16", "uint32")
CHUNK_IDS = 1 << 22  # ids per rarekit.count call: files of any size are read a chunk at a time
PROGRESS_MIN_BYTES = 1 << 26  # inputs of 64 MiB and more show a progress bar
MAX_AUTO_BINS = 1 << 31  # without --vocab-size, larger ids are taken for corrupt data
TOP_IDS = 10  # the most frequent ids listed in the summary
DEMO_RARE_MAX_COUNT = 2  # the demo corpus is a few KB: rare = seen once or twice
COUNT_OUTPUTS = ("counts.npy", "summary.json", "weights.json", "vocab.json", "zipf.png")
STAGING_PREFIX = ".rarekit-count-"  # + pid: the hidden folder in --out where a run writes its outputs first
BYTES_PER_BIN = 24  # int64 counts, the next chunk's counts, float64 weights: the memory a bin of --vocab-size needs
# the demo options left unset on the command line (None) take these, except under --lm, which refuses them
DEMO_DEFAULTS = {"epochs": 30, "time_budget": 80.0, "augment_per_text": 4, "augment_max": 20_000,
                 "max_features": 50_000, "augmenter": "random_swap"}
DEMO_EXTRAS = {"sklearn": "scikit-learn", "pandas": "pandas", "chatterbot_corpus": "chatterbot-corpus",
               "yaml": "pyyaml", "nlpaug": "nlpaug", "matplotlib": "matplotlib"}  # module: package of rarekit[demo]
TEXT_ONLY = ("augment_per_text", "augment_max", "max_features", "augmenter", "mlm")
CLASSIFICATION_ONLY = ("data", "text_col", "label_col", "batch_size", "time_budget", "force", "augment_per_text",
                       "augment_max", "max_features", "augmenter", "mlm", "ddp")


def main(argv: list[str] | None = None) -> int:
    """Runs ``rarekit COMMAND ...`` and returns its exit status (1 on bad input, with the reason on stderr)."""
    parser = argparse.ArgumentParser(prog="rarekit", description="Tools for class imbalance and rare tokens.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_count_command(commands)
    add_demo_command(commands)
    add_bench_command(commands)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, ImportError, LookupError) as error:
        print(f"rarekit {args.command}: error: {error}", file=sys.stderr)
        return 1


def add_count_command(commands) -> None:
    command = commands.add_parser(
        "count", help="count token ids and write counts, a summary, class weights and a Zipf plot",
        description="Count the ids in FILEs and write counts.npy, summary.json, weights.json "
                    "(and vocab.json for text) and zipf.png into --out.")
    command.add_argument("files", nargs="+", type=Path, metavar="FILE", help=".npy, .bin or .txt files of one format")
    command.add_argument("--format", choices=FORMATS,
                         help="npy: integer id arrays; bin: raw token files (see --dtype); txt: whitespace-split "
                              "text, counted over a vocabulary built in order of first appearance "
                              "(default: from the file suffix)")
    command.add_argument("--vocab-size", type=positive_int, metavar="V",
                         help="count ids in [0, V) and drop the others (default: the largest id + 1)")
    command.add_argument("--dtype", choices=BIN_DTYPES, default="uint16",
                         help="id type of .bin files, like nanoGPT's train.bin (default: uint16)")
    command.add_argument("--out", type=Path, default=Path("rarekit-count"), metavar="DIR",
                         help="output folder (default: ./rarekit-count)")
    command.add_argument("--scheme", choices=SCHEMES, default="inverse",
                         help="class weight scheme of weights.json (default: inverse)")
    command.add_argument("--rare-max-count", type=positive_int, default=10, metavar="K",
                         help="seen ids counted at most K times are rare (default: 10)")
    command.set_defaults(run=run_count)


def add_demo_command(commands) -> None:
    command = commands.add_parser(
        "demo", help="an end-to-end imbalance study on real data (offline), with a report",
        description="Count the words of the corpus shipped with rarekit, then train the same small model with "
                    "plain CE, weighted CE, a balanced sampler, logit adjustment, focal loss, LDAM-DRW and (text) "
                    "augment_minority on digits-LT and chatterbot-corpus topics, or on --data; write report.md, "
                    "results.json and plots into --out.")
    command.add_argument("--out", type=Path, default=Path("rarekit-demo"), metavar="DIR",
                         help="output folder (default: ./rarekit-demo)")
    command.add_argument("--data", type=Path, metavar="FILE",
                         help="your own data: .csv/.tsv/.jsonl (with --text-col, --label-col) or .npz with X, y")
    command.add_argument("--text-col", metavar="C", help="text column of --data")
    command.add_argument("--label-col", metavar="L", help="label column of --data")
    command.add_argument("--epochs", type=positive_int,
                         help=f"training epochs per method (default: {DEMO_DEFAULTS['epochs']}; "
                              f"with --lm, {LM_DEFAULT_EPOCHS})")
    command.add_argument("--batch-size", type=positive_int, metavar="B",
                         help="samples per optimizer step, split over the ranks under --ddp (default: 64, or "
                              "training samples / 100 when larger)")
    command.add_argument("--time-budget", type=positive_float, metavar="S",
                         help="seconds of training per method: a method projected past it is skipped with the "
                              "reason, and a study whose cheapest method cannot fit is refused (default: 80)")
    command.add_argument("--force", action="store_true", help="train every method whatever the time it takes")
    command.add_argument("--train-threads", type=positive_int, default=1, metavar="N",
                         help="torch threads while training (default: 1; the small model gains little from more, "
                              "and a loaded machine makes their barriers slow); the kernel timings use all")
    command.add_argument("--augment-per-text", type=positive_int, metavar="K",
                         help="augment_minority generates at most K texts per original text (default: 4)")
    command.add_argument("--augment-max", type=positive_int, metavar="N",
                         help="and at most N texts in all (default: 20000)")
    command.add_argument("--max-features", type=positive_int, metavar="F",
                         help="TF-IDF vocabulary: the F most frequent words of the training texts (default: 50000)")
    command.add_argument("--seed", type=int, default=0, help="seed of the splits, models and samplers (default: 0)")
    command.add_argument("--augmenter", metavar="METHOD",
                         help="augment_minority's augmenter: random_swap (default), contextual, ...")
    command.add_argument("--mlm", metavar="PATH_OR_NAME", help="masked LM folder for --augmenter contextual")
    command.add_argument("--ddp", action="store_true",
                         help="run under torchrun with torch.distributed (gloo on CPU, nccl on GPU)")
    command.add_argument("--no-progress", action="store_true",
                         help="no progress bars (they are shown only when stderr is a terminal)")
    command.add_argument("--lm", action="store_true",
                         help="run the rare-token language-model study instead (rarekit.study.lm: a GRU LM on "
                              "chatterbot-corpus, four losses; writes --out/lm-study); it takes --out, --epochs, "
                              "--seed, --train-threads and --no-progress, and refuses the options of the "
                              "classification study")
    command.set_defaults(run=run_demo)


def add_bench_command(commands) -> None:
    command = commands.add_parser(
        "bench", help="run every benchmarks/bench_*.py; write their JSON and a RESULTS.md into --out",
        description="Run the side-by-side benchmarks of a source checkout and write one JSON per benchmark, "
                    "all.json and RESULTS.md into --out; --update-results also regenerates the checkout's "
                    "benchmarks/RESULTS.md.")
    command.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    command.add_argument("--out", type=Path, metavar="DIR", help="folder for the JSON (default: benchmarks/out)")
    command.add_argument("--quick", action="store_true",
                         help="small inputs, few repeats: a smoke test of the scripts (about 30 s), its figures "
                              "labelled as smoke figures")
    command.add_argument("--update-results", action="store_true",
                         help="also regenerate benchmarks/RESULTS.md (the tracked figures; not with --quick)")
    command.add_argument("--repeat", type=positive_int, metavar="N", help="timed runs per case (default: each script's)")
    command.add_argument("--benchmarks", type=Path, metavar="DIR",
                         help="the benchmarks folder (default: the checkout's benchmarks/, or ./benchmarks)")
    command.set_defaults(run=run_bench)


def benchmarks_folder(given: Path | None) -> Path:
    candidates = [given] if given else [Path(__file__).resolve().parent.parent / "benchmarks", Path("benchmarks")]
    for folder in candidates:
        if (folder / "write_results.py").exists():
            return folder.resolve()
    raise ValueError(f"no benchmarks folder with write_results.py found in {[str(c) for c in candidates]}; "
                     "run from a rarekit source checkout or pass --benchmarks DIR")


def run_bench(args: argparse.Namespace) -> int:
    import subprocess

    folder = benchmarks_folder(args.benchmarks)
    if args.update_results and args.quick:
        raise ValueError("--update-results with --quick would put smoke figures into benchmarks/RESULTS.md")
    out = (args.out or folder / "out").resolve()
    extra = ["--quick"] if args.quick else []
    repeat = args.repeat or (1 if args.quick else None)  # a smoke test: one timed run after one warm-up
    extra += ["--repeat", str(repeat)] if repeat else []
    failed = []
    for script in sorted(folder.glob("bench_*.py")):
        print(f"== {script.name} ({args.device})", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, script.name, "--device", args.device, "--out", str(out), *extra],
                                cwd=folder)
        print(f"== {script.name}: {time.perf_counter() - start:.1f} s", flush=True)
        if result.returncode != 0:
            failed.append(script.name)
    combined = {path.stem: json.loads(path.read_text()) for path in sorted(out.glob("*.json")) if path.stem != "all"}
    write_text_atomic(out / "all.json", json.dumps(combined, indent=2))
    for results in [out / "RESULTS.md"] + ([folder / "RESULTS.md"] if args.update_results else []):
        subprocess.run([sys.executable, "write_results.py", "--json-dir", str(out), "--output", str(results)],
                       cwd=folder, check=True)
    if failed:
        raise ValueError(f"benchmarks failed: {failed}")
    return 0


def run_count(args: argparse.Namespace) -> int:
    formats = {args.format or path.suffix.lstrip(".").lower() for path in args.files}
    unknown = sorted(formats - set(FORMATS))
    if unknown:
        raise ValueError(f"cannot tell the format of files ending in {unknown}; pass --format npy|bin|txt")
    if len(formats) > 1:
        raise ValueError(f"FILEs must share one format, got {sorted(formats)}")
    (file_format,) = formats
    if file_format == "txt" and args.vocab_size is not None:
        raise ValueError(f"--vocab-size {args.vocab_size} does not apply to txt files: their vocabulary is built")
    if args.vocab_size is not None:
        check_memory(args.vocab_size, f"--vocab-size {args.vocab_size:,}")
    return count_and_report(args.files, file_format, args.out, vocab_size=args.vocab_size, dtype=args.dtype,
                            scheme=args.scheme, rare_max_count=args.rare_max_count)


def run_demo(args: argparse.Namespace) -> int:
    from rarekit.study import demo

    if args.lm:
        from rarekit.study import lm as lm_study

        refuse_options(args, CLASSIFICATION_ONLY, "--lm: the language-model study trains on its built-in corpus "
                       "(chatterbot-corpus) with its own batches; it takes --out, --epochs, --seed, --train-threads "
                       "and --no-progress")
        require_demo_extras(["chatterbot_corpus", "yaml", "matplotlib"])
        return lm_study.run(args)
    text = args.data is None or Path(args.data).suffix != ".npz"
    if not text:
        refuse_options(args, TEXT_ONLY, f"--data {Path(args.data).name}: they shape the text features and their "
                       "augmentation, and an .npz file holds arrays")
    if args.mlm and args.augmenter not in (None, "contextual"):
        raise ValueError(f"--mlm is the model of --augmenter contextual; it does not apply to --augmenter "
                         f"{args.augmenter}")
    require_demo_extras(["sklearn"] + ["chatterbot_corpus", "yaml"] * (args.data is None)
                        + ["pandas"] * (text and args.data is not None) + ["nlpaug"] * text)
    for name, value in DEMO_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.ddp:
        demo.require_torchrun()
    writes = not args.ddp or int(os.environ.get("RANK", "0")) == 0
    corpus = None
    if writes and args.data is None:
        shipped = importlib.resources.files("rarekit.study") / "data" / "corpus.txt"
        with importlib.resources.as_file(shipped) as path:
            corpus = count_paths([path], "txt", rare_max_count=DEMO_RARE_MAX_COUNT)
    status = demo.run(args)  # reads and checks the data before anything is written, and writes at the end
    if writes:  # --out is touched only now that the study has succeeded
        corpus_out = args.out / "corpus-count"
        if corpus is None:
            remove_count_outputs(corpus_out, keep=())  # an earlier run's, not this one's
        else:
            print("\ncorpus count (the sample text shipped with rarekit)")
            print_summary(corpus.summary, corpus_out, write_count_outputs(corpus, corpus_out))
    return status


def require_demo_extras(modules: list[str]) -> None:
    """Refuses, before any work, a demo whose packages (the ``demo`` extra) are not installed."""
    import importlib.util

    missing = [DEMO_EXTRAS[module] for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(f"this demo needs {', '.join(missing)}, not installed: pip install rarekit[demo]")


def refuse_options(args: argparse.Namespace, names: tuple[str, ...], reason: str) -> None:
    """Refuses the options ``names`` given on the command line (set, not None or False) that do not apply."""
    given = ["--" + name.replace("_", "-") for name in names if getattr(args, name) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)} do{'es' if len(given) == 1 else ''} not apply to {reason}")


def check_memory(num_bins: int, what: str) -> None:
    """Refuses ``num_bins`` counts that would not fit in the memory available, before allocating."""
    needed = num_bins * BYTES_PER_BIN
    available = available_memory()
    if needed > available:
        raise ValueError(f"{what} needs {needed / 2**30:,.1f} GiB for its counts and weights, more than the "
                         f"{available / 2**30:,.1f} GiB of memory available")


def check_not_overwriting(paths: list[Path], out: Path) -> None:
    """Refuses an input file that is one of the outputs ``out`` would receive."""
    outputs = {(out / name).resolve() for name in COUNT_OUTPUTS}
    for path in paths:
        if Path(path).resolve() in outputs:
            raise ValueError(f"{path} is an input and an output of --out {out}: choose another --out folder")


def remove_count_outputs(out: Path, keep) -> None:
    """Removes the count outputs in ``out`` not in ``keep`` (an earlier run's), and ``out`` if left empty."""
    for name in COUNT_OUTPUTS:
        if name not in keep:
            (out / name).unlink(missing_ok=True)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def count_and_report(paths: list[Path], file_format: str, out: Path, *, vocab_size: int | None = None,
                     dtype: str = "uint16", scheme: str = "inverse", rare_max_count: int = 10) -> int:
    """Counts ``paths``, writes the outputs into ``out`` (see :func:`write_count_outputs`) and prints the summary."""
    check_not_overwriting(paths, out)
    counted = count_paths(paths, file_format, vocab_size=vocab_size, dtype=dtype, scheme=scheme,
                          rare_max_count=rare_max_count)
    print_summary(counted.summary, out, write_count_outputs(counted, out))
    return 0


@dataclass
class Counted:
    """What ``rarekit count`` found: the int64 counts, the summary, the class weights of ``scheme`` and,
    for txt files, the words in id order."""

    counts: torch.Tensor
    summary: dict
    weights: torch.Tensor
    scheme: str
    vocab: list[str] | None


def count_paths(paths: list[Path], file_format: str, *, vocab_size: int | None = None, dtype: str = "uint16",
                scheme: str = "inverse", rare_max_count: int = 10) -> Counted:
    """Counts ``paths`` and summarizes the counts; writes nothing."""
    counts, ids_read, vocab = count_files(paths, file_format, vocab_size, dtype)
    total = int(counts.sum())
    if total == 0:
        raise ValueError(f"no ids counted in {', '.join(map(str, paths))} ({ids_read} read, all dropped)"
                         if ids_read else f"no ids in {', '.join(map(str, paths))}")
    rare = rare_ids(counts, min_count=1, max_count=rare_max_count)
    top_counts, top_ids = counts.topk(min(TOP_IDS, int((counts > 0).sum())))
    summary = {
        "files": [str(path) for path in paths],
        "format": file_format,
        "total": total,
        "dropped": ids_read - total,
        "vocab_size": counts.numel(),
        "distinct": int((counts > 0).sum()),
        "singletons": int((counts == 1).sum()),
        "rare_max_count": rare_max_count,
        "rare": rare.numel(),
        "rare_share": int(counts[rare].sum()) / total,
        "top": [[i if vocab is None else vocab[i], c] for i, c in zip(top_ids.tolist(), top_counts.tolist())],
    }
    return Counted(counts, summary, class_weights(counts, scheme), scheme, vocab)


def write_count_outputs(counted: Counted, out: Path) -> list[str]:
    """Writes counts.npy, summary.json, weights.json, vocab.json (txt) and zipf.png into a hidden folder
    in ``out``, then renames each into place: a write that fails (disk full, a file size limit) names
    its file and leaves the earlier run's set whole. Removes an earlier run's outputs that this run
    does not write, and what killed runs left behind. Returns the names written."""
    out.mkdir(parents=True, exist_ok=True)
    remove_abandoned_files(out)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    try:
        written = write_count_files(counted, staging, out)
        for name in written:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    remove_count_outputs(out, keep=written)
    return written


def write_count_files(counted: Counted, folder: Path, out: Path) -> list[str]:
    """Writes the outputs into ``folder``; an OSError names the file as ``out / name``."""
    writers = {"counts.npy": lambda path: np.save(path, counted.counts.numpy()),
               "summary.json": lambda path: write_json(path, counted.summary, indent=1),
               "weights.json": lambda path: write_json(path, {"scheme": counted.scheme, "normalize": "mean",
                                                              "zero_count": "max", "weights": counted.weights.tolist()}),
               "vocab.json": None if counted.vocab is None else lambda path: write_json(path, counted.vocab),
               "zipf.png": lambda path: plot_frequencies(  # a threshold past every count marks what the largest does
                   counted.counts, path, rare=min(counted.summary["rare_max_count"], int(counted.counts.max())))}
    written = []
    for name, write in writers.items():
        if write is None:
            continue
        try:
            write(folder / name)
        except ImportError as error:  # matplotlib, for the plot
            print(f"rarekit: skipped {name}: {error}", file=sys.stderr)
            continue
        except OSError as error:
            raise OSError(f"cannot write {out / name}: {error}") from error
        written.append(name)
    return written


def remove_abandoned_files(out: Path) -> None:
    """Removes what killed runs left in ``out``: the staging folders of processes that no longer run,
    and the temporary files of the outputs that earlier versions wrote beside them (``.counts.npy.*``)."""
    for path in out.glob(f"{STAGING_PREFIX}*"):
        pid = path.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not process_running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
    for name in COUNT_OUTPUTS:
        for path in out.glob(f".{name}.*"):
            path.unlink(missing_ok=True)


def process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def count_files(paths: list[Path], file_format: str, vocab_size: int | None,
                dtype: str) -> tuple[torch.Tensor, int, list[str] | None]:
    """The int64 counts over all ``paths``, the number of ids read, and the words of txt files in id order."""
    vocab: dict[str, int] | None = {} if file_format == "txt" else None
    sizes = [os.path.getsize(path) for path in paths]
    counts = torch.zeros(vocab_size or 0, dtype=torch.int64)
    ids_read = 0
    with tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="counting",  # disable=None: on a terminal only
              disable=True if sum(sizes) < PROGRESS_MIN_BYTES else None) as progress:
        for path, size in zip(paths, sizes):
            chunks = text_chunks(path, vocab) if vocab is not None else id_chunks(path, file_format, dtype)
            bytes_done = 0
            try:
                for ids, n_bytes in chunks:
                    num_bins = vocab_size if vocab_size is not None else max(max_id(ids) + 1, counts.numel())
                    if num_bins > counts.numel():
                        try:
                            if num_bins > MAX_AUTO_BINS:
                                raise ValueError(f"the largest id is {num_bins - 1:,}: pass --vocab-size V to count "
                                                 "ids in [0, V) and drop the others")
                            check_memory(num_bins, f"the largest id, {num_bins - 1:,},")
                        except ValueError as error:
                            raise ValueError(dtype_hint(ids, file_format, dtype) + str(error)) from None
                    chunk_counts = count(ids, num_bins, check=False)
                    chunk_counts[:counts.numel()] += counts
                    counts = chunk_counts
                    ids_read += ids.numel()
                    progress.update(n_bytes)
                    bytes_done += n_bytes
            except (ValueError, TypeError) as error:
                raise ValueError(f"{path}: {error}") from error
            progress.update(size - bytes_done)  # file headers
    return counts, ids_read, None if vocab is None else list(vocab)


def dtype_hint(ids: torch.Tensor, file_format: str, dtype: str) -> str:
    """For ids too large to count: a raw file of uint16 ids read as uint32 gives such ids (two ids a
    value), so say what its largest id would be as uint16; empty for other files."""
    if file_format != "bin" or dtype != "uint32":
        return ""
    as_uint16 = int(torch.maximum(ids & 0xFFFF, ids >> 16).max())
    return (f"read as uint32 (--dtype uint32), the ids are too large; read as uint16, the largest would be "
            f"{as_uint16:,}: pass --dtype uint16 if the file holds uint16 ids. Else: ")


UINT32_SIGN_IDS = 64  # ids read before a uint16 file whose every second value is 0 is called uint32


def refuse_uint32_as_uint16(ids: np.ndarray) -> None:
    """A little-endian uint32 file of ids below 65,536 read as uint16 gives each id followed by a 0, which
    would count id 0 as half of the file: refused when every second value of the first ids is 0 (a real
    uint16 token file has no such run)."""
    if ids.size >= UINT32_SIGN_IDS and not ids[1::2].any() and ids[::2].any():
        raise ValueError("read as uint16 (the default --dtype), every second value is 0, as in a file of uint32 ids "
                         "below 65,536: pass --dtype uint32 if the file holds uint32 ids")


def id_chunks(path: Path, file_format: str, dtype: str):
    """Yields ``(int64 ids, bytes)``, ``CHUNK_IDS`` ids at a time, from a memory-mapped .npy or raw token file."""
    if file_format == "npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (EOFError, ValueError) as error:
            raise ValueError(f"not a readable .npy file (empty or truncated?): {error}") from error
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"ids must have an integer dtype, got {array.dtype}")
        ids = array.ravel(order="K")
    else:
        size, itemsize = os.path.getsize(path), np.dtype(dtype).itemsize
        if size % itemsize:
            raise ValueError(f"{size} bytes is not a whole number of {dtype} ids; check --dtype")
        ids = np.memmap(path, dtype=dtype, mode="r") if size else np.empty(0, dtype=dtype)
        if dtype == "uint16":
            refuse_uint32_as_uint16(ids[:CHUNK_IDS])
    for start in range(0, ids.size, CHUNK_IDS):
        chunk = ids[start:start + CHUNK_IDS]
        if chunk.dtype == np.uint64 and chunk.size and chunk.max() > np.iinfo(np.int64).max:
            raise ValueError(f"id {int(chunk.max())} does not fit in int64")
        yield torch.from_numpy(chunk.astype(np.int64)), chunk.nbytes


def text_chunks(path: Path, vocab: dict[str, int]):
    """Yields ``(int64 ids, bytes)`` of the whitespace-split words of a UTF-8 text file, adding new words to
    ``vocab`` (word -> id, in order of first appearance)."""
    ids: list[int] = []
    n_bytes = 0
    with open(path, "rb") as handle:
        for line in handle:
            ids += [vocab.setdefault(word, len(vocab)) for word in line.decode("utf-8").split()]
            n_bytes += len(line)
            if len(ids) >= CHUNK_IDS:
                yield torch.tensor(ids, dtype=torch.int64), n_bytes
                ids, n_bytes = [], 0
    yield torch.tensor(ids, dtype=torch.int64), n_bytes


def print_summary(summary: dict, out: Path, written: list[str]) -> None:
    top = ", ".join(f"{label} ({count:,})" for label, count in summary["top"])
    dropped = f" ({summary['dropped']:,} ids outside the vocabulary dropped)" if summary["dropped"] else ""
    print(f"files       {', '.join(summary['files'])} ({summary['format']})\n"
          f"total       {summary['total']:,} tokens{dropped}\n"
          f"distinct    {summary['distinct']:,} of {summary['vocab_size']:,} ids\n"
          f"singletons  {summary['singletons']:,}\n"
          f"rare        {summary['rare']:,} ids counted at most {summary['rare_max_count']} times, "
          f"{summary['rare_share']:.2%} of tokens\n"
          f"top         {top}\n"
          f"wrote       {', '.join(str(out / name) for name in written)}")


def write_json(path: Path, value, indent: int | None = None) -> None:
    write_text_atomic(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
