"""The arithmetic of a run, behind one small seam: what a trainer does and what the loop keeps.

The loop (dlc.train.loop) owns everything that is not arithmetic: data order, augmentation, the
random streams, the schedule, checkpoints, logs, signals and resume. A trainer owns the weights, the
optimizer and the training split's place: it is handed the split once (`bind`) and each epoch's
order once (`feed`), then takes a step's slice of that order (`train_step`: forward and backward
with the penalties) and updates (`update`); it adds each step's loss, top-1 and top-5 hits and
samples to running sums that the loop reads only when it needs them (`tallies`), since on a GPU a
read waits for every step queued before it. Augmented batches are made on the host, so the loop
hands those over as arrays instead. Besides: inference (`predict`), and its state as NumPy arrays and
JSON for a checkpoint (`weights`, `optimizer_state`). Another trainer (PyTorch, say) is another class
with these methods, and a `fresh`/`resume` pair.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import numpy as np

from dlc.analysis import analyse
from dlc.engine.losses import l1_penalty, l2_penalty, maxnorm_
from dlc.engine.params import init_params
from dlc.engine import threads
from dlc.engine.halves import Halves, shares, splits
from dlc.engine.run import freeze_point, frozen_params, loss_and_grads, predict
from dlc.errors import DlcError
from dlc.graph import Graph, Network
from dlc.train import optim
from dlc.train.config import TrainConfig
from dlc.train.dataset import Split
from dlc.train.scoring import count_correct


@dataclass
class Running:
    """Sums over the batches of the epoch in progress (in the checkpoint, so a resumed epoch's
    training metrics count the batches done before the kill too); under torchrun, every process's."""

    loss: float = 0.0  # the batch losses (penalties included) times their sizes
    correct: int = 0  # top-1 hits over every prediction (each step of a sequence output is one)
    top5: int = 0
    seen: int = 0  # samples


class Trainer(Protocol):
    """What the loop asks of a trainer; a class is built by `fresh` or `resume`."""

    rank: int  # this process among `world` data-parallel ones (torchrun); rank 0 alone writes the run
    world: int

    @classmethod
    def fresh(cls, graph: Graph, cfg: TrainConfig, start: tuple[dict, dict] | None = None) -> Trainer:
        """Weights initialised as cfg says (init, init_std, seed), or `start`'s (params, state) from
        --weights, and an optimizer with no state yet."""

    @classmethod
    def resume(cls, net: Network, cfg: TrainConfig, optimizer: dict) -> Trainer:
        """The trainer as a checkpoint left it: its network and meta["optimizer"]."""

    def bind(self, split: Split) -> None:
        """The training split, once before the first step: the trainer keeps it where its steps read it.
        Not called when the loop augments batches (they are made on the host and handed to each step)."""

    def feed(self, order: np.ndarray) -> Sequence:
        """An epoch's order (this process's shard) as the trainer's steps take it: the loop slices each
        step's indices from what this returns (the torch trainer moves it to the device once)."""

    def train_step(self, idx: Sequence, rng: np.random.Generator,
                   batch: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Forward and backward on the samples idx (a slice of `feed`) of the bound split, or on
        `batch`, those samples augmented on the host; the batch's loss with penalties, top-1 and top-5
        hits and size join the running sums. The gradients stay inside, the loss's clipped to the
        global norm cfg.clip before the penalties' are added (adamw's decay is not one)."""

    def update(self, lr: float) -> None:
        """Apply the gradients of the last train_step at learning rate lr."""

    def tallies(self) -> Running:
        """The running sums as host numbers (on a GPU: one wait for the queued steps)."""

    def loss_sum(self) -> float | None:
        """The running loss sum when reading it costs nothing (a host number), else None."""

    def start_tallies(self, running: Running) -> None:
        """Start the running sums from `running` (zeros at an epoch's start, a checkpoint's on resume)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Inference outputs (dropout off, running statistics) for a whole split."""

    def finite(self) -> bool:
        """Whether every weight is a finite number."""

    def weights(self, copy: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(params, state) as dlc's checkpoints name them; copies when they must outlive further steps."""

    def optimizer_state(self) -> dict:
        """The optimizer's slots and step count, JSON-ready and exact, for the checkpoint's meta."""

    def close(self) -> None:
        """The run is over: let go of what the trainer started (helper processes, thread settings)."""


def starting_weights(graph: Graph, cfg: TrainConfig, start: tuple[dict, dict] | None) -> Network:
    """A fresh run's network: start's (params, state) copied (the same start may begin several runs,
    --repeat), else drawn as cfg says (init, init_std, seed). Every trainer starts from these NumPy arrays."""
    if start is not None:
        return Network(graph, *({k: np.array(v, np.float32) for k, v in d.items()} for d in start))
    return Network(graph, *init_params(graph, init=cfg.init, seed=cfg.seed, std=cfg.init_std))


def fresh_optimizer(cfg: TrainConfig) -> optim.Optimizer:
    """The optimizer cfg names, with no slots yet."""
    return optim.make_optimizer(cfg.optimizer, cfg.momentum, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay)


SCORE_SIZE = 1 << 14  # output values held back before their hits are counted in one call (64 KiB)


class NumpyTrainer:
    """dlc's own NumPy engine (dlc.engine.run) with the optimizers of dlc.train.optim."""

    rank, world = 0, 1

    def __init__(self, net: Network, cfg: TrainConfig, opt: optim.Optimizer):
        graph, params = net.graph, net.params
        self.net, self.cfg = net, cfg
        self.classes = graph.output.out_shape[-1]
        self.split: Split | None = None
        self.running = Running()
        self.unscored: list[tuple[np.ndarray, np.ndarray]] = []  # (outputs, targets) of steps not scored yet
        self.unscored_size = 0
        self.opt = opt
        # transfer learning: the layers up to cfg.freeze keep their weights; only the rest is trained
        self.frozen = freeze_point(graph, cfg.freeze) if cfg.freeze else None
        fixed = frozen_params(graph, self.frozen)
        if self.frozen and fixed.issuperset(params):
            raise DlcError(f"freeze={cfg.freeze} leaves no layer with weights to train")
        # before anything keeps the weights: a helper's work moves them into memory both processes share
        macs = analyse(graph, cfg.batch).totals.macs
        self.halves = Halves(net, cfg.batch, cfg.loss, self.frozen, splits(net, macs)) if shares(net, macs) else None
        self.trained = {k: v for k, v in params.items() if k not in fixed}
        self.decayed = optim.decayed(graph, self.trained)
        self.norm_axes = optim.maxnorm_axes(graph, self.trained) if cfg.maxnorm else {}
        self.grads: dict[str, np.ndarray] = {}

    @classmethod
    def fresh(cls, graph: Graph, cfg: TrainConfig, start: tuple[dict, dict] | None = None) -> NumpyTrainer:
        """Weights initialised from cfg.seed, or start's (params, state), and an optimizer with no slots yet."""
        return cls(starting_weights(graph, cfg, start), cfg, fresh_optimizer(cfg))

    @classmethod
    def resume(cls, net: Network, cfg: TrainConfig, optimizer: dict) -> NumpyTrainer:
        """The trainer as a checkpoint left it: its network and meta["optimizer"]."""
        return cls(net, cfg, optim.state_from_json(optimizer))

    def bind(self, split: Split) -> None:
        self.split = split

    def feed(self, order: np.ndarray) -> np.ndarray:
        return order

    def train_step(self, idx: np.ndarray, rng: np.random.Generator,
                   batch: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        x, y = batch if batch is not None else (self.split.x[idx], self.split.y[idx])
        value, out = self.loss_and_grads(x, y, rng)
        self.running.loss += value * len(y)
        self.running.seen += len(y)
        # Small outputs are scored several steps at once: at batch 10 one count_correct call a step
        # cost a tenth of the step. A large one is scored at once, not copied and held.
        if self.unscored_size + out.size > SCORE_SIZE:
            self.score()
            self.add_hits(out, y)
        else:
            self.unscored.append((out.copy(), y))  # a copy: the next step may reuse the output's buffer
            self.unscored_size += out.size

    def score(self) -> None:
        """Add the hits of the outputs held back to the running sums."""
        if self.unscored:
            self.add_hits(*(np.concatenate(a) for a in zip(*self.unscored)))
            self.unscored, self.unscored_size = [], 0

    def add_hits(self, out: np.ndarray, y: np.ndarray) -> None:
        top1, top5 = count_correct(out, y, self.classes)
        self.running.correct += top1
        self.running.top5 += top5

    def tallies(self) -> Running:
        self.score()
        return replace(self.running)

    def loss_sum(self) -> float:
        return self.running.loss

    def start_tallies(self, running: Running) -> None:
        self.running, self.unscored, self.unscored_size = replace(running), [], 0

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[float, np.ndarray]:
        """The batch's loss with penalties and the network's outputs; the gradients kept for update."""
        if self.halves is not None and self.halves.training:
            value, out, grads = self.halves.loss_and_grads(x, y)
        else:
            value, out, grads = loss_and_grads(self.net, x, y, self.cfg.loss, rng=rng, frozen=self.frozen)
        if self.cfg.clip:  # the loss gradient alone, as clip_grad_norm_ before a PyTorch step that adds the decay
            optim.clip_global_norm(grads, self.cfg.clip)
        decay = 0.0 if self.opt.weight_decay else self.cfg.weight_decay  # adamw decays in update, not the loss
        for lam, penalty in ((decay, l2_penalty), (self.cfg.l1, l1_penalty)):
            if lam:
                extra, pgrads = penalty(self.net.params, self.decayed, lam)
                value += extra
                for k, g in pgrads.items():
                    grads[k] = grads[k] + g
        self.grads = grads
        return value, out

    def update(self, lr: float) -> None:
        optim.step(self.opt, self.trained, self.grads, lr, self.decayed)
        for k, axes in self.norm_axes.items():
            maxnorm_(self.net.params[k], self.cfg.maxnorm, axes)
        threads.tick()  # BLAS threads follow the machine's load, when the command started that

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.halves.predict(x) if self.halves is not None else predict(self.net, x)

    def finite(self) -> bool:
        return all(np.isfinite(p).all() for p in self.net.params.values())

    def weights(self, copy: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if copy:
            return ({k: v.copy() for k, v in self.net.params.items()},
                    {k: v.copy() for k, v in self.net.state.items()})
        return self.net.params, self.net.state

    def optimizer_state(self) -> dict:
        return optim.state_to_json(self.opt)

    def close(self) -> None:
        if self.halves is not None:
            self.halves.close()
