"""BalancedSampler under a real torch.distributed process group: 2 gloo processes on 127.0.0.1."""
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import rarekit

WORLD_SIZE = 2
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def labels() -> np.ndarray:
    return np.random.default_rng(0).choice([0, 1, 2, 5], size=1001, p=[0.6, 0.25, 0.1, 0.05])


def shards_of_each_rank(rank: int, port: int, results) -> None:
    """Each rank iterates its shard of three samplers that take num_replicas and rank from the group."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        samplers = {
            "over": rarekit.BalancedSampler(labels(), seed=7),
            "under": rarekit.BalancedSampler(labels(), replacement=False, seed=7, num_samples="resample"),
            "weights": rarekit.BalancedSampler(weights=torch.rand(999, generator=torch.Generator().manual_seed(1)),
                                               replacement=False, num_samples=501, seed=7),
        }
        shards = {}
        for name, sampler in samplers.items():
            sampler.set_epoch(3)
            shards[name] = (sampler.num_replicas, sampler.rank, len(sampler), list(sampler))
        gathered = [None] * WORLD_SIZE
        dist.all_gather_object(gathered, shards)
        if rank == 0:
            results.put(gathered)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_get_disjoint_equal_shards_covering_the_epoch():
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(shards_of_each_rank, args=(free_port(), results), nprocs=WORLD_SIZE, join=True,
                       start_method="spawn")
    per_rank = results.get()
    for name in ("over", "under", "weights"):
        (replicas_0, rank_0, length_0, shard_0), (replicas_1, rank_1, length_1, shard_1) = (
            per_rank[0][name], per_rank[1][name])
        assert (replicas_0, rank_0, replicas_1, rank_1) == (2, 0, 2, 1)
        assert length_0 == length_1 == len(shard_0) == len(shard_1)
        reference = rarekit.BalancedSampler(weights=torch.rand(999, generator=torch.Generator().manual_seed(1)),
                                            replacement=False, num_samples=501, seed=7) if name == "weights" else \
            rarekit.BalancedSampler(labels(), replacement=name == "over", seed=7,
                                    num_samples=None if name == "over" else "resample")
        reference.set_epoch(3)
        epoch = list(reference)
        # rank r holds positions r, r + 2, ... of the epoch's stream, padded with its head
        interleaved = [index for pair in zip(shard_0, shard_1) for index in pair]
        assert interleaved[:len(epoch)] == epoch and interleaved[len(epoch):] == epoch[:len(interleaved) - len(epoch)]
        if name != "over":  # streams without repeats: the shards are disjoint sets too, but for the padding
            padding = len(interleaved) - len(epoch)
            assert set(shard_0).isdisjoint(shard_1[:len(shard_1) - padding])
    assert len(per_rank[0]["weights"][3]) == 251  # 501 draws: rank 1 ends with the head of the stream
