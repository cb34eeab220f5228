"""The BLAS threads follow the machine's load while dlc trains (dlc/engine/threads.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dlc.compile import compile_spec
from dlc.engine import threads
from dlc.engine.params import init_params
from dlc.engine.run import loss_and_grads
from dlc.graph import Network


def test_busy_seconds_reads_proc_stat():
    stat = "cpu  100 20 30 4000 50 6 7 8 0 0\ncpu0 50 10 15 2000 25 3 3 4 0 0\n"
    # user + nice + system + irq + softirq + steal = 100 + 20 + 30 + 6 + 7 + 8 jiffies, idle and iowait not
    assert threads.busy_seconds(stat, 0.01) == pytest.approx(1.71)
    with pytest.raises(ValueError):
        threads.busy_seconds("intr 1 2 3\n", 0.01)


@pytest.mark.parametrize("cores, others, most, want", [
    (2, 0.0, 2, 2),   # a quiet machine: the library's own count
    (2, 0.2, 2, 2),   # a shell's or a display's trickle
    (2, 0.6, 2, 1),   # more than half a core taken
    (2, 1.0, 2, 1),   # one busy process beside
    (2, 3.0, 2, 1),   # everything taken: still one thread
    (8, 2.0, 8, 6),
    (8, 0.0, 4, 4),   # never more than the library started with
])
def test_threads_for(cores, others, most, want):
    assert threads.threads_for(cores, others, most) == want


class FakeBlas:
    def __init__(self, n):
        self.n, self.calls = n, []

    def set_threads(self, n):
        self.n = n
        self.calls.append(n)

    def get_threads(self):
        return self.n


def governor(monkeypatch, samples, cores=2):
    """A governor on a fake library and fake samples of (wall, the machine's busy seconds, this process's
    CPU seconds); the clock it checks stands at the wall time of the last sample taken."""
    blas = FakeBlas(cores)
    g = threads.Governor(threads.Openblas(blas.set_threads, blas.get_threads), cores, cores, cores, 0.01,
                         (0.0, 0.0, 0.0))
    clock = [0.0]
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])

    def sample(tick_seconds):
        s = next(samples)
        clock[0] = s[0]
        return s
    monkeypatch.setattr(threads, "load_sample", sample)
    return g, blas, clock


def test_governor_drops_a_thread_beside_a_busy_process_and_takes_it_back(monkeypatch):
    # every 2 s the machine worked 4 s (both cores): this process 2 s of them (others: 1 core), then
    # 3.9 s (others: 0.05 of a core)
    g, blas, clock = governor(monkeypatch, iter([(2.0, 4.0, 2.0), (4.0, 8.0, 5.9)]))
    clock[0] = 2.0
    g.tick()
    assert (g.threads, blas.calls) == (1, [1])
    clock[0] = 4.0
    g.tick()
    assert (g.threads, blas.calls) == (2, [1, 2])


def test_governor_reads_the_load_only_every_few_seconds(monkeypatch):
    g, blas, clock = governor(monkeypatch, iter([(2.0, 4.0, 2.0)]))
    clock[0] = 1.9
    g.tick()  # not due: nothing read
    clock[0] = 2.0
    g.tick()
    clock[0] = 3.9
    g.tick()  # not due again: a read would find the samples exhausted
    assert blas.calls == [1]


def test_blas_threads_for_a_run_and_the_library_count_back_after():
    blas = threads.find_openblas()
    if blas is None:
        pytest.skip("numpy's BLAS is not OpenBLAS")
    before = blas.get_threads()
    with threads.blas_threads("1") as governor:
        assert governor is None and blas.get_threads() == 1 and threads.ACTIVE == []
    assert blas.get_threads() == before
    with threads.blas_threads("auto") as governor:
        assert threads.ACTIVE == [governor] and governor.threads == before
    assert threads.ACTIVE == [] and blas.get_threads() == before
    with threads.blas_threads(None) as governor:  # the library's count, the load only watched
        assert threads.ACTIVE == [governor] and not governor.follow
    assert threads.ACTIVE == [] and blas.get_threads() == before


def test_a_watching_governor_keeps_the_count_and_says_what_auto_would_do(monkeypatch):
    g, blas, clock = governor(monkeypatch, iter([(2.0, 4.0, 2.0)]))
    g.follow = False
    clock[0] = 2.0
    g.tick()
    assert (g.threads, blas.calls, g.busiest) == (2, [], 1.0)
    assert threads.load_note(g) == ("other processes kept 1.0 of the 2 cores busy during training, and "
                                    "OpenBLAS's 2 threads wait for each other at every matrix product: "
                                    "--threads auto runs as many as the load leaves free")
    g.busiest = 0.4  # a shell's trickle: nothing to say
    assert threads.load_note(g) is None
    g.busiest, g.follow = 1.0, True  # auto already followed it
    assert threads.load_note(g) is None


NETS = {
    "lenet": ("input 1@28x28\nconv 6@5x5 pad=2 relu -> maxpool 2\nconv 16@5x5 relu -> maxpool 2\n"
              "fc 120 relu -> fc 84 relu -> fc 10 softmax\n", (64, 1, 28, 28), 10),
    "encoder": ("input seq 12\nembed 64 vocab=16\nposembed\nadd( layernorm -> attention 4 | identity )\n"
                "add( layernorm -> fc 256 gelu -> fc 64 | identity )\nlayernorm\nfc 16 softmax\n", (64, 12), 16),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_the_thread_count_does_not_change_a_single_bit(name):
    """What lets the count follow the load: the gradients are the same bits with 1 thread and with 2
    (OpenBLAS splits a product's output among threads, not its sums)."""
    blas = threads.find_openblas()
    if blas is None:
        pytest.skip("numpy's BLAS is not OpenBLAS")
    spec, shape, classes = NETS[name]
    graph = compile_spec(spec)
    net = Network(graph, *init_params(graph, seed=0))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, shape) if name == "encoder" else rng.random(shape, dtype=np.float32)
    y = rng.integers(0, classes, shape[:2] if name == "encoder" else shape[:1])
    before = blas.get_threads()
    try:
        results = []
        for n in (1, 2):
            blas.set_threads(n)
            value, out, grads = loss_and_grads(net, x, y, "xent")
            results.append((value, out, grads))
    finally:
        blas.set_threads(before)
    (v1, o1, g1), (v2, o2, g2) = results
    assert v1 == v2
    assert np.array_equal(o1, o2)
    assert all(np.array_equal(g1[k], g2[k]) for k in g1)


def test_a_pinned_count_stays_while_the_governor_counts_the_cores_free(monkeypatch):
    """While a split batch holds one BLAS thread, the governor's count only says whether its helper works."""
    g, blas, clock = governor(monkeypatch, iter([(2.0, 4.0, 2.0), (4.0, 8.0, 5.9)]))
    monkeypatch.setattr(threads, "ACTIVE", [g])
    monkeypatch.setattr(threads, "PINNED", [2])
    clock[0] = 2.0
    g.tick()
    assert (g.threads, blas.calls, threads.cores_free()) == (1, [], 1)
    clock[0] = 4.0
    g.tick()
    assert (g.threads, blas.calls, threads.cores_free()) == (2, [], 2)


def test_cores_free_is_the_fixed_count_or_the_machine_s():
    assert threads.cores_free() == len(os.sched_getaffinity(0))
    if threads.find_openblas() is None:
        pytest.skip("numpy's BLAS is not OpenBLAS")
    with threads.blas_threads("1"):
        assert threads.cores_free() == 1
    with threads.blas_threads("3"):
        assert threads.cores_free() == 3
    assert threads.cores_free() == len(os.sched_getaffinity(0))


def test_pin_holds_one_thread_and_unpin_gives_the_count_back():
    blas = threads.find_openblas()
    if blas is None:
        pytest.skip("numpy's BLAS is not OpenBLAS")
    before = blas.get_threads()
    threads.pin_one_thread()
    threads.pin_one_thread()
    assert blas.get_threads() == 1
    threads.unpin()
    assert blas.get_threads() == 1  # the other pin still holds
    threads.unpin()
    assert blas.get_threads() == before and threads.PINNED == []
