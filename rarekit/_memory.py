"""The memory free for new tensors, checked before an allocation that a bad argument can make huge."""
from __future__ import annotations

import os

import torch


def available_memory(device=None) -> int:
    """Bytes free for new tensors on ``device``: ``torch.cuda.mem_get_info`` on a CUDA device, else
    MemAvailable of /proc/meminfo (else the physical memory)."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
