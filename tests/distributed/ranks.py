"""Runs a function on W gloo ranks in fresh processes (torch.multiprocessing, spawn), under a deadline:
a rank that raises fails the test with its traceback, and a hang fails it too instead of blocking."""
from __future__ import annotations

import datetime
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(rank: int, fn, world: int, port: int, report: str, args: tuple) -> None:
    """Runs fn, then leaves with os._exit: a process group that something still references (a
    DeviceMesh, a profiler trace) keeps its gloo worker threads past destroy_process_group, and one of
    them dropping a tensor while the interpreter finalizes aborts the process (pytorch/pytorch#190489)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        fn(rank, world, *args)
    except BaseException:
        Path(report, f"rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, world: int, *args, timeout: float = 120.0) -> None:
    """fn(rank, world, *args) on ``world`` ranks of a fresh gloo process group; raises what a rank
    raised (with its traceback), or TimeoutError after ``timeout`` seconds."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as report:
        context = mp.start_processes(_rank_main, args=(fn, world, free_port(), report, args), nprocs=world,
                                     join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=0.5):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{getattr(fn, '__name__', fn)} on {world} ranks did not finish in {timeout} s "
                                       "(a hang)")
        except Exception as error:  # every rank's traceback: the first to fail may be a peer's victim
            reports = "\n".join(f"--- {path.stem}:\n{path.read_text()}" for path in sorted(Path(report).iterdir()))
            raise AssertionError(f"{error}\n{reports}") from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
