"""A training step as two halves of its batch, the second on a helper process while a core is free;
scoring shared with the helper the same way.

numpy runs each operation on one core, and OpenBLAS's second thread joins only the larger matrix
products: a LeNet-5 step at batch 64 is some 150 operations on arrays of a few hundred KB, and the
second core stays idle. Threads of one process cannot share that work, since every numpy call takes
Python's lock back between operations: two threads each on half the batch took 4.7 ms a step against
4.5 ms for one thread on all of it. A second process can. The helper is forked once, reads the
parameters from memory both processes share (updates happen in place, so it sees each one), takes
the second half of each batch through a shared buffer, and hands back its loss, outputs and gradients
the same way: a LeNet-5 step took 3.4 ms against 4.5 (each half 2.5 ms beside the other, the wait for
the helper 0.1 ms).

Scoring (`predict`, every epoch on validation and test) shares its batches with the helper too: every
other batch of PREDICT_BATCH samples, each computed as the engine's predict computes it, on one BLAS
thread in both processes. Inference never makes samples meet (bn reads its running statistics, which
live in the shared memory too and which bn updates in place), so scoring is shared wherever the step is
large enough (`shares`), and training splits where the rule below allows.

The split is a rule of the network and the batch (`splits`), never of the machine. The batch's first
n // 2 samples and the rest each run the engine's step, and the halves' losses and gradients combine
weighted by their sizes, in that order. Where the second half runs (the helper, or this process) changes
no bit, because both halves compute with one BLAS thread wherever they run (threads.pin_one_thread:
OpenBLAS rounds some products differently on two). So a seeded run gives the same numbers on one core
and on many, loaded or not, and `--threads` only says whether the helper works: `--threads 1` keeps both
halves here, `auto` follows the machine's load.

bn normalises by the whole batch, so its halves meet (`Peer`): at each bn in training, each half writes
its per-channel sums to a slot both read and waits for the other's, three times a bn (the sums, then the
centred squares, forward; dy's sums and its dot products with x - mean, backward). Both then hold the
whole batch's statistics, added first half first, and only the first half moves the running ones. In
this process the two halves run as two threads that take turns at each meeting (`Turns`), one computing
at a time. An EfficientNet-style step (11 bn, 33 meetings) took 98 ms against 164 ms whole, and 90 ms
with halves that did not meet.

Networks split unless their samples meet some other way within a step: a draw of random numbers
(dropout's masks come from one stream in batch order), a mixture's load-balancing loss (over the whole
batch), running statistics of a kind outside ACROSS_KINDS; one input. A step must also be large enough
that a second process pays (SPLIT_MACS). If the helper ends within a step, the running statistics go
back to where the step found them and the whole step runs here.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dlc.engine import threads
from dlc.engine.run import ACROSS_KINDS, PREDICT_BATCH, compile_plan, loss_and_grads, predict
from dlc.graph import Network

# Forward multiply-adds of a whole step from which its batch splits. At batch 64 the 784-30-10 MLP (1.5 M)
# steps in about 0.2 ms, less than the helper's round trip and the second call's own overhead (0.4 ms
# at any batch); LeNet-5 (27 M) gained 1.35x.
SPLIT_MACS = 8_000_000
ASK = struct.Struct("<?qq")  # a request: training (a second part) or inference, its samples, the batch's
REPLY = struct.Struct("<?d")  # the helper's answer: whether its part ran, and its loss
MET = b"\x02"  # within a training step: this part's sums wait in its slot (ASK and REPLY begin with 0 or 1)


def shares(net: Network, step_macs: int) -> bool:
    """Whether the network's scoring is shared with a helper (one input, a step of SPLIT_MACS at least),
    given the forward multiply-adds of a whole training step (dlc.analysis counts them)."""
    return len(compile_plan(net.graph).inputs) == 1 and step_macs >= SPLIT_MACS


def splits(net: Network, step_macs: int) -> bool:
    """Whether the network's training steps also run as two halves (the rule in the module docstring)."""
    plan = compile_plan(net.graph)
    meets = {step.node.kind for step in plan.exact if step.state}
    return shares(net, step_macs) and meets <= ACROSS_KINDS and not (plan.random or plan.balanced)


@dataclass
class Shared:
    """Arrays in memory the helper process shares: the inputs and targets of its part of a batch (no
    targets where only scoring is shared), and its outputs and gradients (by parameter name)."""

    x: np.ndarray
    y: np.ndarray | None
    out: np.ndarray
    grads: dict[str, np.ndarray]
    sums: np.ndarray  # Peer.slots


class Gone(Exception):
    """The batch's other part ended within a step (its process died or failed, its thread raised)."""


@dataclass
class Peer:
    """One part's side of a batch that trains as two parts (kernels.Across): bn's sums of each part go
    through `slots`, which both read, and `meet` returns once the other part has written its own."""

    first: bool
    weight: float
    slots: np.ndarray  # float64 (part, turn, value): each part writes its row, both read both
    meet: Callable[[], None]  # raises Gone where the other part ended
    turn: int = 0

    def total(self, local: np.ndarray) -> np.ndarray:
        k = len(local)
        self.slots[0 if self.first else 1, self.turn, :k] = local
        self.meet()
        both = self.slots[0, self.turn, :k] + self.slots[1, self.turn, :k]
        # the next meeting writes the other turn's slots: a part can be one meeting ahead of the other,
        # never two, so neither overwrites a slot the other has still to read
        self.turn ^= 1
        return both


class Turns:
    """Two threads of this process computing a batch's two parts in turns, one at a time (the process
    may use one core): a part runs until it meets the other, then hands the turn over."""

    def __init__(self):
        self.changed = threading.Condition()
        self.now = 0  # the part whose turn it is
        self.stopped = False  # a part raised: the other stops at its next meeting

    def wait(self, part: int) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.now == part or self.stopped)
            if self.stopped:
                raise Gone

    def hand_over(self, part: int) -> None:
        with self.changed:
            self.now = 1 - part
            self.changed.notify_all()

    def meet(self, part: int) -> None:
        self.hand_over(part)
        self.wait(part)

    def stop(self) -> None:
        with self.changed:
            self.stopped = True
            self.changed.notify_all()


def shared_arrays(shapes: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray]:
    """Zeroed arrays of these shapes and dtypes in one anonymous shared mapping, which a forked child shares."""
    sizes = {k: int(np.prod(s, dtype=np.int64)) * np.dtype(t).itemsize for k, (s, t) in shapes.items()}
    aligned = {k: -(-n // 64) * 64 for k, n in sizes.items()}  # each array on its own cache lines
    memory = mmap.mmap(-1, max(64, sum(aligned.values())))
    out, at = {}, 0
    for k, (shape, dtype) in shapes.items():
        out[k] = np.frombuffer(memory, dtype, int(np.prod(shape, dtype=np.int64)), at).reshape(shape)
        at += aligned[k]
    return out


def read_exactly(fd: int, n: int) -> bytes:
    """n bytes from a pipe, or fewer where it ended."""
    data = b""
    while len(data) < n:
        part = os.read(fd, n - len(data))
        if not part:
            break
        data += part
    return data


@dataclass
class Helper:
    pid: int
    ask: int  # write end of the requests (ASK)
    answer: int  # read end of the answers (REPLY)


def stop(helper: Helper) -> None:
    """Close the helper's pipes (it exits when its read ends) and wait for it."""
    for fd in (helper.ask, helper.answer):
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        os.waitpid(helper.pid, 0)
    except ChildProcessError:
        pass


class Halves:
    """A network's scoring (`predict`), and with `training` its training steps (`loss_and_grads`, see
    `splits`), as the engine's, with a part on the helper process while `threads.cores_free()` says a
    second core is free.

    The parameters and running statistics move into shared memory when this is made, so make it before
    anything else keeps references to the network's arrays; `close()` stops the helper and gives BLAS
    its threads back."""

    def __init__(self, net: Network, batch: int, loss: str, frozen: str | None, training: bool = True):
        self.net, self.loss, self.frozen, self.training = net, loss, frozen, training
        self.room = max(batch - batch // 2, PREDICT_BATCH)  # samples of the largest part the helper takes
        # the longest vector a part's bn sends the other: its channels' sums and dot products, and a count
        self.sums_length = 2 * max((len(v) for v in net.state.values()), default=0) + 1
        for arrays in (net.params, net.state):
            moved = shared_arrays({k: (v.shape, v.dtype) for k, v in arrays.items()})
            for k, v in arrays.items():
                moved[k][...] = v
                arrays[k] = moved[k]
        self.shared: Shared | None = None  # made with the helper, once a batch shows its dtypes
        self.helper: Helper | None = None
        self.ended = False  # the helper failed, or close() ended it: every part runs here from then on
        self.closer = None
        self.pinned = training  # split training steps hold one BLAS thread throughout, scoring while it runs
        if training:
            threads.pin_one_thread()

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
        """(loss, outputs, gradients) of the whole batch, as two parts weighted by their sizes."""
        n = len(y)
        a = n // 2
        if a == 0:
            return loss_and_grads(self.net, x, y, self.loss, frozen=self.frozen)
        parts = self.with_helper(x, y, a)
        if parts is None:
            parts = self.here(x, y, a)
        (v1, out1, g1), (v2, out2, g2) = parts
        w1, w2 = a / n, (n - a) / n
        grads = {k: g1[k] * w1 + g2[k] * w2 for k in g1}
        return v1 * w1 + v2 * w2, np.concatenate([out1, out2]), grads

    def with_helper(self, x: np.ndarray, y: np.ndarray, a: int) -> list | None:
        """The two parts' (loss, outputs, gradients), the second computed on the helper; None where no helper
        takes it, or where it ended within the step (bn's running statistics are then as before the step)."""
        n = len(y)
        helper = self.helper_for(x, y, n - a)
        if helper is None:
            return None
        self.shared.x[:n - a] = x[a:]
        self.shared.y[:n - a] = y[a:]
        before = {k: v.copy() for k, v in self.net.state.items()}
        if self.send(helper, True, n - a, n) is None:
            return None
        peer = Peer(True, a / n, self.shared.sums, lambda: meet(helper.ask, helper.answer))
        try:
            first = loss_and_grads(self.net, x[:a], y[:a], self.loss, frozen=self.frozen, across=peer)
        except Gone:
            first = None
        except BaseException:
            self.fail()  # the helper may be waiting for this part's sums, which will not come
            raise
        second = self.answer(helper, n - a) if first is not None else None
        if second is None:
            self.fail()
            for k, v in before.items():
                self.net.state[k][...] = v
            return None
        return [first, second]

    def here(self, x: np.ndarray, y: np.ndarray, a: int) -> list:
        """The two parts' (loss, outputs, gradients) computed in this process: one after the other where
        they never meet, else in turns (bn's statistics are of the whole batch)."""
        n = len(y)
        halves = (slice(0, a), slice(a, n))
        if not self.net.state:
            return [loss_and_grads(self.net, x[h], y[h], self.loss, frozen=self.frozen) for h in halves]
        weights = (a / n, (n - a) / n)
        turns, slots = Turns(), np.zeros((2, 2, self.sums_length))
        results: list = [None, None]
        settings = np.geterr()  # the caller's floating-point error handling, for the second thread too

        def part(i: int) -> None:
            try:
                with np.errstate(**settings):
                    turns.wait(i)
                    peer = Peer(i == 0, weights[i], slots, lambda: turns.meet(i))
                    results[i] = loss_and_grads(self.net, x[halves[i]], y[halves[i]], self.loss,
                                                frozen=self.frozen, across=peer)
                turns.hand_over(i)
            except BaseException as e:  # Ctrl-C too: the other thread then stops at its next meeting
                results[i] = e
                turns.stop()

        second = threading.Thread(target=part, args=(1,), daemon=True)
        second.start()
        part(0)
        second.join()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:  # the one that stopped the other part
            raise next((e for e in errors if not isinstance(e, Gone)), errors[0])
        return results

    def helper_for(self, x: np.ndarray, y: np.ndarray | None, b: int) -> Helper | None:
        """The helper to take b samples of x (and y, in training) now, started on first use (by a training
        step where training splits). None while no second core is free, where it cannot run, or for
        arrays its buffers do not fit."""
        if self.ended or threads.cores_free() < 2 or not hasattr(os, "fork") or sys.platform != "linux":
            return None
        if self.helper is None:
            if y is None and self.training:
                return None
            self.start(x, y)
        s = self.shared
        fits = b <= len(s.x) and x.dtype == s.x.dtype and x.shape[1:] == s.x.shape[1:]
        if y is not None:
            fits = fits and s.y is not None and y.dtype == s.y.dtype and y.shape[1:] == s.y.shape[1:]
        return self.helper if fits else None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The engine's predict on one BLAS thread, every other batch of PREDICT_BATCH samples on the
        helper: the same bits wherever a batch ran."""
        if not self.training:
            threads.pin_one_thread()
        try:
            return self.shared_predict(x)
        finally:
            if not self.training:
                threads.unpin()

    def shared_predict(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray) or self.helper_for(x, None, PREDICT_BATCH) is None:
            return predict(self.net, x)  # rows read lazily (an image folder) stay with the engine's own loop
        out = np.empty((len(x), *self.net.graph.output.out_shape), np.float32)
        for start in range(0, len(x), 2 * PREDICT_BATCH):
            here = slice(start, min(start + PREDICT_BATCH, len(x)))
            there = slice(here.stop, min(here.stop + PREDICT_BATCH, len(x)))
            b = there.stop - there.start
            helper = self.helper if b else None  # None too once it failed: the rest runs here
            if helper is not None:
                self.shared.x[:b] = x[there]
                helper = self.send(helper, False, b)
            try:
                out[here] = predict(self.net, x[here])
            finally:
                theirs = self.answer(helper, b) if helper is not None else None
            if b:
                out[there] = theirs[1] if theirs is not None else predict(self.net, x[there])
        return out

    def start(self, x: np.ndarray, y: np.ndarray | None) -> None:
        out_shape = self.net.graph.output.out_shape
        params = self.net.params if self.training else {}
        targets = {} if y is None else {"y": ((self.room, *y.shape[1:]), y.dtype)}
        arrays = shared_arrays({"x": ((self.room, *x.shape[1:]), x.dtype), **targets,
                                "out": ((self.room, *out_shape), np.dtype(np.float32)),
                                "sums": ((2, 2, self.sums_length), np.dtype(np.float64)),
                                **{"grad:" + k: (v.shape, v.dtype) for k, v in params.items()}})
        self.shared = Shared(arrays["x"], arrays.get("y"), arrays["out"], {k: arrays["grad:" + k] for k in params},
                             arrays["sums"])
        ask_r, ask_w = os.pipe()
        answer_r, answer_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the helper: it never returns into the caller's code
            try:
                # Only its own two pipes stay open: a copy of another helper's request pipe, or of a run
                # folder's lock, would outlive the process that owns it and keep that helper waiting.
                low, high = sorted((ask_r, answer_w))
                os.closerange(3, low)
                os.closerange(low + 1, high)
                os.closerange(high + 1, os.sysconf("SC_OPEN_MAX"))
                serve(self, ask_r, answer_w)
            finally:
                os._exit(0)
        os.close(ask_r)
        os.close(answer_w)
        self.helper = Helper(pid, ask_w, answer_r)
        self.closer = weakref.finalize(self, stop, self.helper)

    def send(self, helper: Helper, training: bool, b: int, batch: int = 0) -> Helper | None:
        """Ask the helper for its part of b samples (of a training batch of `batch`), waiting in the shared
        buffers; None where it has gone."""
        try:
            os.write(helper.ask, ASK.pack(training, b, batch))
        except OSError:  # a broken pipe: the helper ended (killed, out of memory)
            self.fail()
            return None
        return helper

    def answer(self, helper: Helper, b: int) -> tuple[float, np.ndarray, dict[str, np.ndarray]] | None:
        """The helper's part of b samples as (loss, outputs, gradients), views of the shared buffers that the
        caller copies before its next request; None where it failed: the helper is then stopped, and the
        caller runs the part itself."""
        reply = read_exactly(helper.answer, REPLY.size)
        if len(reply) == REPLY.size:
            ran, value = REPLY.unpack(reply)
            if ran:
                return value, self.shared.out[:b], self.shared.grads
        self.fail()
        return None

    def fail(self) -> None:
        """The helper failed, or the trainer is done: it is stopped, and never started again (a step after
        close() would otherwise fork a new one, with BLAS no longer pinned)."""
        self.ended = True
        if self.closer is not None:
            self.closer()
        self.helper = self.closer = None

    def close(self) -> None:
        """Stop the helper and give BLAS its threads back; the network keeps its (shared) arrays, and
        computes every part here from now on."""
        self.fail()
        if self.pinned:
            threads.unpin()
            self.pinned = False


def serve(halves: Halves, ask: int, answer: int) -> None:
    """The helper's loop: each request says training or inference and how many samples wait in the shared
    buffers; it answers with REPLY once the outputs (and gradients) are there. It ends when the request
    pipe closes (the trainer closed, or its process ended), and leaves Ctrl-C to the parent, which stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threads.pin_one_thread()  # as the parent's predict and split steps: the parts' bits match wherever they ran
    s = halves.shared
    while True:
        request = read_exactly(ask, ASK.size)
        if len(request) < ASK.size:
            return
        training, b, batch = ASK.unpack(request)
        try:
            if training:
                peer = Peer(False, b / batch, s.sums, lambda: meet(answer, ask))
                value, out, grads = loss_and_grads(halves.net, s.x[:b], s.y[:b], halves.loss, frozen=halves.frozen,
                                                   across=peer)
                for k, g in grads.items():
                    s.grads[k][...] = g
            else:
                value, out = 0.0, predict(halves.net, s.x[:b])
            s.out[:b] = out
            reply = REPLY.pack(True, value)
        except Gone:  # the parent stopped this step: it stops the helper too
            return
        except Exception:  # the parent runs the part itself, which raises the error where it can be reported
            reply = REPLY.pack(False, 0.0)
        os.write(answer, reply)


def meet(tell: int, hear: int) -> None:
    """Peer.meet between processes: this part's sums are in its slot, so say so on `tell`, and wait on
    `hear` for the other's."""
    try:
        os.write(tell, MET)
    except OSError:
        raise Gone from None
    if read_exactly(hear, 1) != MET:  # its process ended, or its part failed (a REPLY)
        raise Gone
