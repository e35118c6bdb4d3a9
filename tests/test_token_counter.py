"""rarekit.TokenCounter against torch.bincount on fresh random streams."""
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rarekit import counting
from rarekit.counting import TokenCounter

DISTRIBUTED_NUM_BINS = 300


def bincount(ids, num_bins, ignore_index=None):
    """Independent check: torch.bincount over the ids in [0, num_bins) other than ignore_index."""
    flat = ids.reshape(-1).long().cpu()
    keep = (flat >= 0) & (flat < num_bins)
    if ignore_index is not None:
        keep &= flat != ignore_index
    return torch.bincount(flat[keep], minlength=num_bins)


def random_batch(gen, num_bins, shape):
    """Ids in range, a few out of range on both sides, and about 10% -100 padding."""
    ids = torch.randint(-3, num_bins + 3, shape, generator=gen)
    return torch.where(torch.rand(shape, generator=gen) < 0.1, -100, ids)


def test_update_stream_matches_bincount(device, gen):
    num_bins = int(torch.randint(1, 500, (1,), generator=gen))
    batches = [random_batch(gen, num_bins, (int(torch.randint(0, 64, (1,), generator=gen)), 7)) for _ in range(20)]
    counter = TokenCounter(num_bins, check=False, device=device)  # out-of-range ids dropped
    for batch in batches:
        assert counter.update(batch.to(device)) is counter
    expected = bincount(torch.cat(batches), num_bins)
    assert counter.counts.device == device and counter.counts.dtype == torch.int64
    assert torch.equal(counter.counts.cpu(), expected)
    assert counter.total == int(expected.sum())


def test_ignore_index_inside_range_is_skipped(device, gen):
    ids = torch.randint(0, 20, (3000,), generator=gen)
    skipping = TokenCounter(20, ignore_index=0, device=device).update(ids)
    counting_all = TokenCounter(20, ignore_index=None, device=device).update(ids)
    assert torch.equal(skipping.counts.cpu(), bincount(ids, 20, ignore_index=0))
    assert int(skipping.counts[0]) == 0
    assert torch.equal(counting_all.counts.cpu(), bincount(ids, 20))


@pytest.mark.parametrize("convert", [
    lambda ids: ids.tolist(),
    lambda ids: ids.numpy().astype(np.int32),
    lambda ids: ids.numpy().astype(np.uint16),
    lambda ids: ids.to(torch.uint8),
    lambda ids: ids.to(torch.int16).reshape(5, -1),
    lambda ids: ids.to(torch.uint32),
])
def test_update_accepts_lists_arrays_and_id_dtypes(gen, convert):
    ids = torch.randint(0, 120, (400,), generator=gen)
    counter = TokenCounter(100, check=False).update(convert(ids))
    assert torch.equal(counter.counts, bincount(ids, 100))


def test_counts_is_a_copy_and_inputs_are_not_mutated(device, gen):
    ids = torch.randint(-5, 10, (100,), generator=gen, device="cpu").to(device)
    before = ids.clone()
    counter = TokenCounter(10, check=False, device=device).update(ids)
    returned = counter.counts
    returned += 1000
    assert torch.equal(ids, before)
    assert torch.equal(counter.counts.cpu(), bincount(ids, 10))


def test_empty_updates_and_one_bin(device):
    counter = TokenCounter(3, device=device).update(torch.empty(0, dtype=torch.int64)).update([])
    assert torch.equal(counter.counts.cpu(), torch.zeros(3, dtype=torch.int64)) and counter.total == 0
    counter.update_from([], progress=False)
    assert counter.total == 0
    one = TokenCounter(1, check=False, device=device).update(torch.tensor([0, 0, 1, -1, 0]))
    assert one.counts.tolist() == [3] and one.total == 3


@pytest.mark.parametrize("num_bins", [0, -4, 2.5, True, "10", None])
def test_bad_num_bins(num_bins):
    with pytest.raises(ValueError, match="num_bins"):
        TokenCounter(num_bins)


@pytest.mark.parametrize("ignore_index", [1.5, "pad", True])
def test_bad_ignore_index(ignore_index):
    with pytest.raises(TypeError, match="ignore_index"):
        TokenCounter(5, ignore_index=ignore_index)


def test_update_rejects_non_integer_ids():
    counter = TokenCounter(5)
    with pytest.raises(TypeError, match="ids must have an integer dtype"):
        counter.update(torch.tensor([0.5, 1.0]))
    with pytest.raises(TypeError, match="ids"):
        counter.update("hello")
    assert counter.total == 0


def test_merge_adds_the_other_counter(device, gen):
    first_ids, second_ids = random_batch(gen, 50, (300,)), random_batch(gen, 50, (200,))
    first = TokenCounter(50, check=False, device=device).update(first_ids)
    second = TokenCounter(50, check=False).update(second_ids)
    assert first.merge(second) is first
    assert torch.equal(first.counts.cpu(), bincount(torch.cat([first_ids, second_ids]), 50))
    assert torch.equal(second.counts, bincount(second_ids, 50))


def test_merge_rejects_incompatible_counters():
    counter = TokenCounter(10)
    with pytest.raises(ValueError, match="num_bins=11"):
        counter.merge(TokenCounter(11))
    with pytest.raises(ValueError, match="ignore_index=0"):
        counter.merge(TokenCounter(10, ignore_index=0))
    with pytest.raises(TypeError, match="TokenCounter, got Tensor"):
        counter.merge(torch.zeros(10, dtype=torch.int64))


def test_state_dict_round_trip(device, gen):
    ids = random_batch(gen, 40, (500,))
    counter = TokenCounter(40, ignore_index=3, check=False, device=device).update(ids)
    state = counter.state_dict()
    counter.update(ids)  # the state is a copy: later updates leave it alone
    assert state["num_bins"] == 40 and state["ignore_index"] == 3
    assert torch.equal(state["counts"].cpu(), bincount(ids, 40, ignore_index=3))
    restored = TokenCounter(40, ignore_index=3, device=device)
    assert restored.load_state_dict(state) is restored
    assert torch.equal(restored.counts.cpu(), bincount(ids, 40, ignore_index=3))
    state["counts"] += 1  # and the loaded counts are a copy of the state's
    assert torch.equal(restored.counts.cpu(), bincount(ids, 40, ignore_index=3))


@pytest.mark.parametrize("change, message", [
    (lambda state: state.pop("counts"), r"missing keys \['counts'\]"),
    (lambda state: state.update(num_bins=41), "num_bins=41"),
    (lambda state: state.update(ignore_index=None), "ignore_index=None"),
    (lambda state: state.update(counts=torch.zeros(39, dtype=torch.int64)), r"shape \(40,\)"),
    (lambda state: state.update(counts=torch.zeros(40)), "integer tensor"),
    (lambda state: state.update(counts=torch.full((40,), -1)), "non-negative"),
])
def test_load_state_dict_rejects_bad_states(change, message):
    counter = TokenCounter(40).update(torch.arange(40))
    state = TokenCounter(40).state_dict()
    change(state)
    with pytest.raises(ValueError, match=message):
        counter.load_state_dict(state)
    assert torch.equal(counter.counts, torch.ones(40, dtype=torch.int64))
    with pytest.raises(TypeError, match="mapping"):
        counter.load_state_dict([1, 2])


def test_save_and_load(tmp_path, device, gen):
    ids = random_batch(gen, 70, (1000,))
    TokenCounter(70, ignore_index=None, check=False, device=device).update(ids).save(tmp_path / "counter.pt")
    loaded = TokenCounter.load(tmp_path / "counter.pt", device=device)
    assert (loaded.num_bins, loaded.ignore_index, loaded.device) == (70, None, device)
    assert torch.equal(loaded.counts.cpu(), bincount(ids, 70))
    torch.save({"weights": torch.ones(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not hold a saved TokenCounter"):
        TokenCounter.load(tmp_path / "other.pt")


def test_update_from_mixed_sequences_in_batches(gen, monkeypatch, capsys):
    monkeypatch.setattr(counting, "UPDATE_FROM_BATCH_IDS", 50)
    lengths = torch.randint(0, 30, (60,), generator=gen).tolist()
    sequences = [random_batch(gen, 80, (length,)) for length in lengths]
    as_given = [[ids.tolist(), ids.numpy().astype(np.int32), ids, ids.to(torch.int16)][i % 4]
                for i, ids in enumerate(sequences)]
    counter = TokenCounter(80, check=False).update_from(as_given)
    assert torch.equal(counter.counts, bincount(torch.cat(sequences), 80))
    assert "counting" in capsys.readouterr().err
    quiet = TokenCounter(80, check=False).update_from((ids for ids in sequences), progress=False)
    assert torch.equal(quiet.counts, counter.counts)
    assert capsys.readouterr().err == ""


def test_update_from_concatenates_short_sequences(gen, monkeypatch):
    calls = []
    monkeypatch.setattr(counting, "count", lambda ids, *args, **kwargs: calls.append(ids.numel()) or
                        torch.zeros(10, dtype=torch.int64))
    TokenCounter(10).update_from([torch.randint(0, 10, (5,), generator=gen) for _ in range(100)], progress=False)
    assert calls == [500]


def test_update_from_names_the_bad_sequence():
    counter = TokenCounter(10)
    with pytest.raises(TypeError, match=r"sequences\[1\] must have an integer dtype"):
        counter.update_from([[1, 2], [0.5]], progress=False)
    with pytest.raises(TypeError, match=r"sequences\[0\]"):
        counter.update_from(["some text"], progress=False)


def test_all_reduce_outside_a_distributed_job_or_on_one_rank_leaves_the_counter_unchanged():
    counter = TokenCounter(4)
    counter.update(torch.tensor([0, 3, 3]))
    assert counter.all_reduce() is counter and counter.counts.tolist() == [1, 0, 0, 2]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        assert counter.all_reduce() is counter and counter.counts.tolist() == [1, 0, 0, 2]
    finally:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_ids(seed: int, rank: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + rank)
    return random_batch(gen, DISTRIBUTED_NUM_BINS, (int(torch.randint(0, 5000, (1,), generator=gen)),))


def all_reduce_worker(rank: int, port: int, seed: int, out_dir) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        counter = TokenCounter(DISTRIBUTED_NUM_BINS, check=False).update(rank_ids(seed, rank))
        assert counter.all_reduce() is counter
        torch.save(counter.counts, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_two_gloo_processes(tmp_path, gen):
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    mp.spawn(all_reduce_worker, args=(free_port(), seed, tmp_path), nprocs=2)
    expected = bincount(rank_ids(seed, 0), DISTRIBUTED_NUM_BINS) + bincount(rank_ids(seed, 1), DISTRIBUTED_NUM_BINS)
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), expected)


@pytest.mark.cuda
def test_update_does_not_synchronize_on_cuda(gen):
    ids = random_batch(gen, 1000, (100_000,))
    on_gpu = ids.cuda()
    counter = TokenCounter(1000, check=False, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        counter.update(on_gpu).update(on_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(counter.counts.cpu(), 2 * bincount(ids, 1000))


def test_concurrent_updates_from_4_threads_lose_no_count(gen, monkeypatch):
    """TokenCounter.update from 4 threads at once: every count arrives (the add is under a lock). The
    in-place add is slowed into read, pause, write, so an unsynchronized update would lose counts here."""
    import threading
    import time

    def racy_iadd(self, other):
        before = self.clone()
        time.sleep(1e-4)  # another thread runs here
        return self.copy_(before + other)

    monkeypatch.setattr(torch.Tensor, "__iadd__", racy_iadd)
    batches = [[torch.randint(0, 50, (int(torch.randint(1, 300, (1,), generator=gen)),), generator=gen)
                for _ in range(50)] for _ in range(4)]
    counter = TokenCounter(50, ignore_index=None)
    start = threading.Barrier(4)

    def work(own):
        start.wait()
        for batch in own:
            counter.update(batch)

    threads = [threading.Thread(target=work, args=(own,)) for own in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = bincount(torch.cat([batch for own in batches for batch in own]), 50)
    assert torch.equal(counter.counts, expected)


def test_pickle_and_deepcopy_keep_the_counts():
    import copy
    import pickle

    counter = TokenCounter(8, ignore_index=None).update(torch.arange(8).repeat(3))
    for clone in (copy.deepcopy(counter), pickle.loads(pickle.dumps(counter))):
        assert torch.equal(clone.update(torch.tensor([0])).counts, torch.tensor([4] + [3] * 7))
    assert torch.equal(counter.counts, torch.full((8,), 3))


def test_failed_save_leaves_the_old_file_whole(tmp_path, monkeypatch):
    """A save that dies half-way (disk full) keeps the earlier file and leaves no temporary behind."""
    path = tmp_path / "counter.pt"
    TokenCounter(30, ignore_index=None).update(torch.arange(30)).save(path)
    real_save = torch.save

    def disk_full(obj, target, *args, **kwargs):
        real_save(obj, target, *args, **kwargs)
        with open(target, "r+b") as handle:  # half of it written, then the disk fills up
            handle.truncate(len(handle.read()) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        TokenCounter(30, ignore_index=None).update(torch.zeros(99, dtype=torch.int64)).save(path)
    monkeypatch.undo()
    assert torch.equal(TokenCounter.load(path).counts, torch.ones(30, dtype=torch.int64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter.pt"]


def write_state(path, **state):
    torch.save({"num_bins": 20, "ignore_index": None, "counts": torch.zeros(20, dtype=torch.int64), **state}, path)


@pytest.mark.parametrize("make_file, message", [
    (lambda path: path.write_bytes(b""), "the file is empty"),
    (lambda path: path.write_bytes(b"not a torch file at all"), "truncated or not written by TokenCounter.save"),
    (lambda path: write_state(path, num_bins=2**40), r"num_bins = 1099511627776 but counts has 20 entries"),
    (lambda path: write_state(path, counts=torch.zeros(20)), "counts must be a 1-D int64 tensor"),
    (lambda path: write_state(path, counts=torch.zeros(4, 5, dtype=torch.int64)), "counts must be a 1-D int64"),
    (lambda path: write_state(path, num_bins="20"), "does not hold a saved TokenCounter"),
    (lambda path: write_state(path, extra=1), "does not hold a saved TokenCounter"),
    (lambda path: torch.save([1, 2], path), "does not hold a saved TokenCounter"),
    (lambda path: write_state(path, counts=torch.full((20,), -4)), "non-negative"),
])
def test_load_checks_the_file_before_allocating(tmp_path, make_file, message):
    path = tmp_path / "counter.pt"
    make_file(path)
    with pytest.raises(ValueError, match=message) as error:
        TokenCounter.load(path)
    assert str(path) in str(error.value) or "state_dict['counts']" in str(error.value)


def test_load_names_a_truncated_file_and_a_wrong_vocabulary_size(tmp_path):
    path = tmp_path / "counter.pt"
    TokenCounter(500, ignore_index=None).update(torch.arange(500)).save(path)
    with pytest.raises(ValueError, match=r"counter\.pt: wrong vocabulary size: the file counts 500 ids, "
                                         r"expected num_bins=400"):
        TokenCounter.load(path, num_bins=400)
    assert TokenCounter.load(path, num_bins=500).total == 500
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 40):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"counter\.pt: cannot read a saved TokenCounter: the file is truncated"):
            TokenCounter.load(path)
