"""Training steps as two halves of the batch, the second on a helper process (dlc/engine/halves.py).

The references: the engine's step on the whole batch (the mean loss and its gradient, which the halves
weighted by their sizes must give up to float32 rounding), and the same halves computed in this process
(which the helper's must give bit for bit, wherever the second half ran).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from click.testing import CliRunner

from dlc.analysis import analyse
from dlc.cli import main
from dlc.compile import compile_spec
from dlc.engine import halves, threads
from dlc.engine.params import init_params
from dlc.engine.run import loss_and_grads, predict
from dlc.graph import Network

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(os, "sched_getaffinity"),
                                reason="the helper is forked, on Linux")

LENET_RELU = ("input 1@28x28\nconv 6@5x5 pad=2 relu -> maxpool 2\nconv 16@5x5 relu -> maxpool 2\n"
              "fc 120 relu -> fc 84 relu -> fc 10 softmax\n")
TRANSFORMER = (Path(__file__).resolve().parents[2] / "specs" / "transformer_reverse.dlc").read_text()
LENET_BN = "input 1@28x28\nconv 6@5x5 pad=2 bn relu -> maxpool 2\nconv 16@5x5 relu -> maxpool 2\nfc 10 softmax\n"


def network(spec: str, seed: int = 0) -> Network:
    g = compile_spec(spec, "<test>")
    return Network(g, *init_params(g, seed=seed))


def batch(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


@pytest.fixture
def cores(monkeypatch):
    """Set how many cores the run may use (2: the helper takes the second half, 1: this process does)."""
    def set_cores(n: int) -> None:
        monkeypatch.setattr(threads, "cores_free", lambda: n)
    return set_cores


@pytest.mark.parametrize("spec, batch_size, shared, split", [
    (LENET_RELU, 64, True, True),  # 27.4 M forward multiply-adds a step
    (LENET_RELU, 16, False, False),  # 6.8 M: below SPLIT_MACS
    ("input 784\nfc 30 sigmoid -> fc 10 sigmoid\n", 64, False, False),  # the MLP: 1.5 M
    # bn normalises by the whole batch in training: its parts exchange their sums
    (LENET_BN, 64, True, True),
    # dropout draws its masks from one stream in training, and nothing in inference; at 0 nothing ever
    ("input 1@28x28\nconv 6@5x5 pad=2 relu -> maxpool 2\nconv 16@5x5 relu -> maxpool 2\ndropout 0.5\nfc 10 softmax\n",
     64, True, False),
    ("input 1@28x28\nconv 6@5x5 pad=2 relu -> maxpool 2\nconv 16@5x5 relu -> maxpool 2\ndropout 0\nfc 10 softmax\n",
     64, True, True),
    # attention without dropout (the zoo's transformer_reverse: 1.23 M MACs a sample) draws nothing
    (TRANSFORMER, 64, True, True),
    (TRANSFORMER.replace("attention h", "attention h dropout=0.1"), 64, True, False),
])
def test_which_networks_split_and_which_share_their_scoring(spec, batch_size, shared, split):
    net = network(spec)
    macs = analyse(net.graph, batch_size).totals.macs
    assert (halves.shares(net, macs), halves.splits(net, macs)) == (shared, split)


def test_lenet_forward_macs_are_what_the_rule_reads():
    # conv1 6*25*28*28 + conv2 16*150*10*10 + fc 400*120 + 120*84 + 84*10, per sample
    per_sample = 6 * 25 * 784 + 16 * 150 * 100 + 400 * 120 + 120 * 84 + 84 * 10
    assert 16 * per_sample < halves.SPLIT_MACS <= 64 * per_sample


def whole_and_halves(spec: str, x: np.ndarray, y: np.ndarray, cores, cores_free: int):
    """The engine's step on the whole batch and Halves' step as two parts, each from the same weights, and
    the two networks after them (bn's running statistics): (whole, halves, whole's network, halves')."""
    cores(cores_free)
    whole_net, net = network(spec), network(spec)
    value, out, grads = loss_and_grads(whole_net, x, y, "xent")
    whole = value, out.copy(), {k: g.copy() for k, g in grads.items()}
    split = halves.Halves(net, 64, "xent", None)
    try:
        parts = split.loss_and_grads(x, y)
        assert (split.helper is not None) == (cores_free == 2)
    finally:
        split.close()
    return whole, parts, whole_net, net


def assert_same_step(whole: tuple, parts: tuple, tolerance: float) -> None:
    """The loss to 1e-6, the outputs to 1e-5, each gradient to 1e-4 or `tolerance` of the largest one."""
    (whole_value, whole_out, whole_grads), (value, out, grads) = whole, parts
    assert value == pytest.approx(whole_value, rel=1e-6)
    np.testing.assert_allclose(out, whole_out, rtol=1e-5, atol=1e-7)
    assert grads.keys() == whole_grads.keys()
    largest = max(np.abs(g).max() for g in whole_grads.values())
    for k, g in whole_grads.items():
        np.testing.assert_allclose(grads[k], g, rtol=1e-4, atol=tolerance * largest, err_msg=k)


@pytest.mark.parametrize("n", [64, 7])
def test_halves_give_the_whole_batch_mean(cores, n):
    """Weighted by their sizes (3 and 4 of 7), the halves' loss and gradients are the whole batch's."""
    whole, parts, _, _ = whole_and_halves(LENET_RELU, *batch(n), cores, 2)
    assert_same_step(whole, parts, 1e-6)


def split_steps(spec: str, cores_free: int, cores, steps: int = 3, frozen: str | None = None, data=batch):
    """Losses, outputs, gradients and running statistics of a few steps of Halves on the network, with a
    plain SGD update between them, on batches that `data` draws; and whether the helper was still there."""
    cores(cores_free)
    net = network(spec)
    split = halves.Halves(net, 64, "xent", frozen)
    seen = []
    try:
        for s in range(steps):
            x, y = data(64 - 9 * s, seed=s)  # 64, 55 (27 + 28), 46
            value, out, grads = split.loss_and_grads(x, y)
            seen.append((value, out.copy(), {k: g.copy() for k, g in grads.items()},
                         {k: v.copy() for k, v in net.state.items()}))
            for k, g in grads.items():
                net.params[k] -= 0.1 * g  # in place, as every optimizer updates
        used = split.helper is not None
    finally:
        split.close()
    return seen, used


def same_bits(a: list, b: list) -> None:
    for (v1, o1, g1, s1), (v2, o2, g2, s2) in zip(a, b, strict=True):
        assert v1 == v2
        assert o1.tobytes() == o2.tobytes()
        assert g1.keys() == g2.keys() and all(g1[k].tobytes() == g2[k].tobytes() for k in g1)
        assert all(s1[k].tobytes() == s2[k].tobytes() for k in s1)


@pytest.mark.parametrize("frozen", [None, "conv2"])
def test_the_helper_gives_the_same_bits_as_this_process(cores, frozen):
    here, helped = split_steps(LENET_RELU, 1, cores, frozen=frozen)
    there, used = split_steps(LENET_RELU, 2, cores, frozen=frozen)
    assert used and not helped
    same_bits(here, there)
    if frozen:
        assert not {"conv1.W", "conv2.W"} & here[0][2].keys()


def alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == 0


def test_close_stops_the_helper_and_gives_blas_its_threads_back(cores):
    cores(2)
    blas = threads.find_openblas()
    before = blas.get_threads() if blas else None
    split = halves.Halves(network(LENET_RELU), 64, "xent", None)
    if blas:
        assert blas.get_threads() == 1
    split.loss_and_grads(*batch(64))
    pid = split.helper.pid
    assert alive(pid)
    split.close()
    assert not alive(pid)
    if blas:
        assert blas.get_threads() == before
    split.loss_and_grads(*batch(64))  # a step after close runs here: no new helper
    assert split.helper is None


def test_a_helper_that_died_leaves_the_half_to_this_process(cores):
    reference, _ = split_steps(LENET_RELU, 1, cores, steps=1)
    cores(2)
    split = halves.Halves(network(LENET_RELU), 64, "xent", None)
    try:
        split.loss_and_grads(*batch(64, seed=5))
        os.kill(split.helper.pid, signal.SIGKILL)
        os.waitpid(split.helper.pid, 0)  # gone for sure: the next request meets a broken pipe
        value, out, grads = split.loss_and_grads(*batch(64, seed=0))
        assert split.ended and split.helper is None
    finally:
        split.close()
    v, o, g, _ = reference[0]
    assert value == v and out.tobytes() == o.tobytes()
    assert all(grads[k].tobytes() == g[k].tobytes() for k in g)


def children() -> set[int]:
    """The processes this one started that are still there."""
    me, out = str(os.getpid()), set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == me:
            out.add(int(entry))
    return out


@pytest.mark.parametrize("spec", [LENET_RELU, LENET_BN])
def test_dlc_train_gives_the_same_numbers_on_one_core_and_two(tmp_path, spec):
    """The whole command: --threads 1 keeps both halves in this process, --threads 2 gives the second to
    the helper. The log's losses and accuracies are the same numbers (with bn, the validation and test
    scores read the running statistics), and no helper outlives its run."""
    before = children()
    logs = []
    for count in ("1", "2"):
        out = tmp_path / f"run{count}"
        r = CliRunner().invoke(main, ["train", "-e", spec, "--data", "glyphs", "--n-train", "640",
                                      "--n-val", "128", "--n-test", "128", "--epochs", "2", "--batch", "64",
                                      "--threads", count, "--out", str(out), "--quiet"])
        assert r.exit_code == 0, r.output
        logs.append([json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()])
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy")
    assert len(logs[0]) == 2
    assert [[r[k] for k in keys] for r in logs[0]] == [[r[k] for k in keys] for r in logs[1]]
    assert children() == before


@pytest.mark.parametrize("n", [200, 64, 30])
def test_scoring_on_the_helper_gives_the_engine_s_bits(cores, n):
    """Every other batch of 64 on the helper: 200 samples are batches of 64, 64, 64 and 8."""
    net = network(LENET_RELU)
    x, y = batch(max(n, 64), seed=3)
    cores(2)
    split = halves.Halves(net, 64, "xent", None)
    try:
        split.loss_and_grads(x[:64], y[:64])  # the helper starts with a training step
        assert split.helper is not None
        out = split.predict(x[:n])
        reference = predict(net, x[:n])
    finally:
        split.close()
    assert out.shape == reference.shape and out.tobytes() == reference.tobytes()


def test_a_helper_stops_while_another_runs(cores):
    """The second helper is forked while the first one's request pipe is open; closing the first must not
    wait on a copy of that pipe in the second (each helper keeps only its own pipes)."""
    cores(2)
    first = halves.Halves(network(LENET_RELU), 64, "xent", None)
    second = halves.Halves(network(LENET_RELU), 64, "xent", None)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("closing the first helper hung"))
    signal.alarm(60)
    try:
        first.loss_and_grads(*batch(64))
        second.loss_and_grads(*batch(64))
        pid = first.helper.pid
        first.close()
        assert not alive(pid)
    finally:
        signal.alarm(0)
        first.close()
        second.close()


BN_NET = ("input 3@16x16\nconv 16@3x3 pad=1 bias=off bn silu\ndwconv 3x3/2 pad=1 bias=off bn silu\n"
          "conv 8@1x1 bn\ngap\nfc 10 softmax\n")


def test_scoring_alone_is_shared_and_sees_bn_s_running_statistics_move(cores):
    """Scoring shared alone (Halves without training, as for a bn network that also has dropout): each batch
    as the engine's predict on one BLAS thread gives it, also after training steps have moved bn's running
    statistics (in place, in the memory both processes share); BLAS has its count back between scorings."""
    cores(2)
    net = network(BN_NET)
    rng = np.random.default_rng(4)
    x, y = rng.random((150, 3, 16, 16), dtype=np.float32), rng.integers(0, 10, 150)
    blas = threads.find_openblas()
    before = blas.get_threads() if blas else None
    start = {k: v.copy() for k, v in net.state.items()}
    split = halves.Halves(net, 64, "xent", None, training=False)
    try:
        for step in range(2):
            out = split.predict(x)
            assert split.helper is not None
            if blas:
                assert blas.get_threads() == before
                blas.set_threads(1)
            reference = predict(net, x)
            if blas:
                blas.set_threads(before)
            assert out.tobytes() == reference.tobytes()
            loss_and_grads(net, x[:64], y[:64], "xent")  # moves bn's running statistics
        assert any(not np.array_equal(v, start[k]) for k, v in net.state.items())  # the statistics did move
    finally:
        split.close()

BN_FC = "input 3@16x16\nfc 32 bn relu\nfc 10 softmax\n"


def bn_batch(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 16, 16), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("spec", [BN_NET, BN_FC])
@pytest.mark.parametrize("cores_free", [2, 1])
@pytest.mark.parametrize("n", [64, 7])
def test_bn_parts_give_the_whole_batch_s_step_and_statistics(cores, cores_free, n, spec):
    """bn's parts exchange their sums: the loss, outputs and gradients are the whole batch's step (3 and 4 of
    7 samples too), on the helper or as two threads here, and the running statistics move once, as the
    whole batch moves them (the mean and the unbiased variance of all n samples). On images (the conv
    path's batch-innermost memory) and on vectors."""
    whole, parts, whole_net, net = whole_and_halves(spec, *bn_batch(n), cores, cores_free)
    # a bias before bn (conv2's, fc1's) has a gradient of 0 but for rounding (bn removes any shift), which is
    # why assert_same_step compares at the scale of the largest gradient
    assert_same_step(whole, parts, 1e-5)
    for k, v in whole_net.state.items():
        np.testing.assert_allclose(net.state[k], v, rtol=1e-5, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("frozen", [None, "bn1"])
def test_bn_parts_give_the_same_bits_on_the_helper_and_here(cores, frozen):
    here, helped = split_steps(BN_NET, 1, cores, frozen=frozen, data=bn_batch)
    there, used = split_steps(BN_NET, 2, cores, frozen=frozen, data=bn_batch)
    assert used and not helped
    same_bits(here, there)
    if frozen:
        assert not {"conv1.W", "bn1.gamma"} & here[0][2].keys()


@pytest.mark.parametrize("how", ["exits", "raises"])
def test_a_helper_that_ends_between_meetings_leaves_the_step_to_this_process(cores, monkeypatch, how):
    """The helper ends at its third meeting of a step (its process exits, or its part raises): this process
    runs the whole step again as two threads, from the running statistics as they were before it."""
    reference, _ = split_steps(BN_NET, 1, cores, steps=2, data=bn_batch)
    met, parent = [], os.getpid()

    def meet(tell, hear):  # as the forked helper will have it
        met.append(1)
        # the second step's third meeting: BN_NET meets 9 times a step (3 bn, 3 times each)
        if os.getpid() != parent and len(met) == 9 + 3:
            if how == "exits":
                os._exit(1)
            raise RuntimeError("the helper's part failed")
        real_meet(tell, hear)
    real_meet = halves.meet
    monkeypatch.setattr(halves, "meet", meet)
    seen, used = split_steps(BN_NET, 2, cores, steps=2, data=bn_batch)
    assert not used  # stopped at the second step
    same_bits(reference, seen)


@pytest.mark.parametrize("failing", [0, 1])
def test_a_part_that_raises_here_stops_the_other(cores, monkeypatch, failing):
    """The two threads of a step here: the error of either part reaches the caller, and the other part
    stops at its next meeting rather than waiting for ever (a 60 s alarm turns a hang into a failure)."""
    cores(1)
    engine_step = halves.loss_and_grads

    def step(*args, across, **kwargs):
        if across.first == (failing == 0):
            raise ValueError("this part failed")
        return engine_step(*args, across=across, **kwargs)
    monkeypatch.setattr(halves, "loss_and_grads", step)
    split = halves.Halves(network(BN_NET), 64, "xent", None)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the other part hung"))
    signal.alarm(60)
    try:
        with pytest.raises(ValueError, match="this part failed"):
            split.loss_and_grads(*bn_batch(64))
    finally:
        signal.alarm(0)
        split.close()


@pytest.mark.parametrize("cores_free", [2, 1])
def test_transformer_halves_give_the_whole_batch_step(cores, cores_free):
    """Token ids in, a distribution per position out (the loss is the mean over samples and positions):
    27 and 28 of 55 sequences weighted by their sizes give the whole batch's loss and gradients."""
    rng = np.random.default_rng(2)
    x = rng.integers(0, 16, (55, 12))
    whole, parts, _, _ = whole_and_halves(TRANSFORMER, x, x[:, ::-1].copy(), cores, cores_free)
    assert_same_step(whole, parts, 1e-6)
