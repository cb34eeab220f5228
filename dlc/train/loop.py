"""The training run: seeded mini-batch epochs, checkpoints that resume bit for bit, logs and metrics.

Exact resume rests on three things. The sample order of an epoch is a function of (seed, epoch) alone
(dlc.train.order), so a run resumed mid-epoch skips the batches it already did. The random streams
(dropout/noise inside the network, augmentation outside it) are Generators whose states go into the
checkpoint. The optimizer's slots go in too, as exact bytes. Nothing else feeds the weights.

last.npz is written every `save_every` steps or `save_seconds` within an epoch, and at the end of
every epoch that ends at least EPOCH_SAVE_GAP after the previous checkpoint, and of the last epoch
(dlc.train.rundir has the files). Checkpoints carry in their meta what `--resume` needs to rebuild
the run: the spec text, the configuration, the data source and its normalisation.

The arithmetic (forward, backward, update, inference) and the running sums of the epoch (loss, top-1,
top-5, samples) are the trainer's (dlc.train.trainer); this module runs the epochs around it. It reads
the sums only when it needs them, because on a GPU a read waits for every queued step: when the
progress display redraws (about ten times a second), at a checkpoint and at the epoch's end; the
NumPy trainer's loss sum, a host number, after every step too. A loss that became NaN or infinite is
found at such a read, and the message names the steps since the last good one.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dlc import choices
from dlc.engine.losses import check_class_labels
from dlc.errors import DlcError
from dlc.graph import Graph, Network
from dlc.layers import feature_axis
from dlc.layers.spatial import show
from dlc.train.augment import augment_batch, check_augment
from dlc.train.config import TrainConfig, config_to_json
from dlc.train.dataset import ByInput, Data, LazyRows, Split
from dlc.train.trainer import NumpyTrainer, Running, Trainer
from dlc.train.order import epoch_order
from dlc.train.rundir import RUN_SCHEMA, RunFiles, Snapshot
from dlc.train.schedules import make_schedule, warmup_factor
from dlc.train.scoring import classifies, evaluate, improves
from dlc.train.signals import StopFlag
from dlc.train.streams import STREAM_AUGMENT, STREAM_NOISE, rng_from, rng_state

SAVE_SECONDS = 60.0  # default checkpoint interval within an epoch: a killed run loses at most a minute
EPOCH_SAVE_GAP = 1.0  # seconds: a shorter epoch's end is not checkpointed unless it is the last


@dataclass
class Position:
    epoch: int = 0  # the epoch in progress, counted from 0 (= epochs completed)
    batch: int = 0  # batches of it done
    step: int = 0  # optimizer steps done in all


@dataclass
class RunResult:
    out: Path
    history: list[dict]  # one record per completed epoch (log.jsonl)
    best: dict
    seconds: float
    stopped: str | None = None  # None, "diverged" or "interrupted"
    message: str = ""

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


class Stop(Exception):
    """Ends the run early with this result (a divergence or a signal), after its files are written."""

    def __init__(self, result: RunResult):
        self.result = result


def check_config(cfg: TrainConfig, graph: Graph, data: Data) -> None:
    if cfg.augment.active and isinstance(data.train.x, ByInput):
        raise DlcError(f"--flip, --shift, --noise and --mixup augment one input's images; a network with several "
                       f"inputs ({', '.join(data.train.x.arrays)}) trains on its data as it is")
    check_augment(cfg.augment, graph.input.out_shape)
    if cfg.batch < 1 or cfg.epochs < 0 or cfg.lr <= 0:
        raise DlcError(f"need batch >= 1, epochs >= 0 and lr > 0 (received batch={cfg.batch}, "
                       f"epochs={cfg.epochs}, lr={cfg.lr})")
    if cfg.clip < 0 or cfg.warmup < 0:
        raise DlcError(f"need clip >= 0 and warmup >= 0 (received clip={cfg.clip}, warmup={cfg.warmup})")
    if cfg.loss not in choices.LOSSES:
        raise DlcError(f"unknown loss `{cfg.loss}` (expected {', '.join(choices.LOSSES)})")
    out = graph.output
    if cfg.loss == "xent" and out.kind == "softmax" and out.attrs["axis"] != feature_axis(out.out_shape):
        # the fused loss and the class targets read the classes along the features (dlc.engine.losses)
        raise DlcError(f"xent reads the classes along axis {feature_axis(out.out_shape)} of the output "
                       f"{show(out.out_shape)}, but the final softmax runs over axis {out.attrs['axis']}: drop its "
                       f"axis= or choose another --loss")
    if cfg.balanced and data.train.y.ndim != 1:
        raise DlcError("--balanced needs class labels, not target rows")
    check_class_labels(cfg.loss, graph.output.out_shape, data.train.y)


def shard_size(n: int, world: int) -> int:
    return -(-n // world)


def shard(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This process's part of an epoch's order, as torch's DistributedSampler takes it: the order
    padded with its own start to a multiple of `world`, then every world-th sample from `rank`."""
    total = shard_size(len(order), world) * world
    padded = np.concatenate([order, order[:total - len(order)]]) if total > len(order) else order
    return padded[rank:total:world]


class Run:
    """One training run. Its state is explicit: the trainer's weights, optimizer and running sums, the
    position, the best epoch and the random streams; a checkpoint's meta is exactly that state."""

    def __init__(self, graph: Graph, data: Data, cfg: TrainConfig, out: Path, *, meta: dict,
                 checkpoint: tuple[dict, dict, dict] | None, save_every: int | None, save_seconds: float,
                 on_event: Callable[[str, dict], None], trainer: type[Trainer],
                 start: tuple[dict, dict] | None = None):
        check_config(cfg, graph, data)
        self.graph, self.data, self.cfg = graph, data, cfg
        self.save_every, self.save_seconds, self.emit = save_every, save_seconds, on_event
        self.classes = graph.output.out_shape[-1]
        self.predictions = math.prod(graph.output.out_shape[:-1])  # per sample: a TxV output predicts T
        self.scored = classifies(data, self.classes)
        self.lr_at = make_schedule(cfg.schedule, cfg.lr, cfg.epochs, step_every=cfg.step_every,
                                   gamma=cfg.gamma, power=cfg.power, restart_every=cfg.restart_every,
                                   lr_min=cfg.lr_min, k=cfg.k)
        self.fresh = checkpoint is None
        if checkpoint is None:
            self.trainer: Trainer = trainer.fresh(graph, cfg, start)
            self.noise_rng = np.random.default_rng([cfg.seed, STREAM_NOISE])
            self.aug_rng = np.random.default_rng([cfg.seed, STREAM_AUGMENT])
            self.pos, running, self.best, self.elapsed = Position(), Running(), {}, 0.0
        else:
            params, state, saved = checkpoint
            self.trainer = trainer.resume(Network(graph, params, state), cfg, saved["optimizer"])
            self.noise_rng, self.aug_rng = rng_from(saved["rng"]["noise"]), rng_from(saved["rng"]["augment"])
            self.pos, running = Position(**saved["position"]), Running(**saved["running"])
            self.best, self.elapsed = saved["best"], saved["elapsed"]
        self.trainer.start_tallies(running)
        self.good_step = self.pos.step  # the last step a read found the loss finite at
        self.bad: tuple[int, int, float] | None = None  # (step, batch, loss sum) of a read that found it not
        # augmented batches, and those of lazy rows (read ahead in a thread), are made on the host and
        # handed over each step
        self.on_host = cfg.augment.active or isinstance(data.train.x, LazyRows)
        if not self.on_host:
            self.trainer.bind(data.train)
        self.files = RunFiles(out, writes=self.trainer.rank == 0)
        self.history = self.files.history(self.fresh, self.pos.epoch)
        self.batches = -(-shard_size(len(data.train), self.trainer.world) // cfg.batch)
        self.fixed_meta = dict(meta, schema_run=RUN_SCHEMA, spec=graph.source, file=graph.file,
                               config=config_to_json(cfg))
        self.started = time.perf_counter()
        self.stop = StopFlag()

    # ----------------------------------------------------------------------------------- state

    def seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self.started

    def snapshot(self, copy: bool) -> Snapshot:
        """(params, state, meta) as they are now; copies when they must outlive further steps."""
        doc = dict(self.fixed_meta, position=asdict(self.pos), running=asdict(self.read()), best=self.best,
                   elapsed=self.seconds(),
                   rng={"noise": rng_state(self.noise_rng), "augment": rng_state(self.aug_rng)},
                   optimizer=self.trainer.optimizer_state())
        return (*self.trainer.weights(copy), doc)

    def flush(self, write_last: bool = True) -> None:
        """Write the pending best checkpoint, then last.npz; a non-finite weight or loss is never written."""
        snapshot = self.snapshot(copy=False) if write_last and self.trainer.finite() else None
        self.files.flush(snapshot if self.bad is None else None)  # the snapshot's read may find the loss bad

    def read(self) -> Running:
        """The epoch's running sums, from the trainer (on a GPU: a wait for the queued steps); notes
        where the loss stopped being finite, for check."""
        running = self.trainer.tallies()
        self.note(running.loss)
        return running

    def note(self, loss: float) -> None:
        """Note whether the epoch's loss sum, just read, is still finite (for check)."""
        if self.bad is None:
            if math.isfinite(loss):
                self.good_step = self.pos.step
            else:
                self.bad = (self.pos.step, self.pos.batch, loss)

    def check(self, together: bool = False) -> None:
        """Stop if a read found the loss NaN or infinite. Under torchrun only where every process reads
        at the same step (`together`: an epoch's end, --save-every), so that they all stop there."""
        if self.bad is None or not (together or self.trainer.world == 1):
            return
        first, (last, batch, value) = self.good_step + 1, self.bad
        where = (f"step {last} (batch {batch} of {self.batches})" if first == last else
                 f"steps {first}-{last} (batches {batch - (last - first)}-{batch} of {self.batches})")
        raise self.diverged(f"the loss became {value} at epoch {self.pos.epoch + 1}, {where} "
                            f"with lr {self.lr_at(self.pos.epoch):g}")

    def result(self, stopped: str | None = None, message: str = "") -> RunResult:
        r = RunResult(self.files.out, self.history, self.best, self.seconds(), stopped, message)
        self.files.write_metrics({"schema": RUN_SCHEMA, "epochs": len(self.history), "stopped": stopped,
                                  "message": message or None, "seconds": r.seconds, "final": r.final,
                                  "best": self.best, "history": self.history})
        return r

    def diverged(self, what: str) -> Stop:
        self.flush(write_last=False)
        return Stop(self.result("diverged", f"{what}; stopped, keeping the last good checkpoint {self.files.last}"))

    def interrupted(self, where: str) -> Stop:
        return Stop(self.result("interrupted", f"stopped by {self.stop.raised} {where}; "
                                               f"continue with --resume {self.files.out}"))

    # ------------------------------------------------------------------------------------- run

    def run(self) -> RunResult:
        if self.fresh:
            self.flush()  # a good checkpoint exists from the first moment, whatever happens next
        # overflow on the way to a NaN loss is reported once, by check, not as numpy warnings
        with self.stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            try:
                while self.pos.epoch < self.cfg.epochs:
                    self.epoch()
            except Stop as stop:
                return stop.result
            finally:
                self.trainer.close()
        return self.result()

    def epoch(self) -> None:
        pos, cfg = self.pos, self.cfg
        lr = self.lr_at(pos.epoch)
        order = epoch_order(len(self.data.train), cfg.seed, pos.epoch, self.data.train.y, cfg.balanced)
        if self.trainer.world > 1:
            order = shard(order, self.trainer.rank, self.trainer.world)
        self.emit("epoch", {"epoch": pos.epoch + 1, "epochs": cfg.epochs, "batches": self.batches,
                            "done": pos.batch, "lr": lr})
        # batches made on the host are gathered from the order; otherwise the trainer holds it (on its device)
        fed = order if self.on_host else self.trainer.feed(order)
        ahead = ReadAhead(self.data.train) if isinstance(self.data.train.x, LazyRows) else None
        epoch_start, seen_here = time.perf_counter(), 0
        try:
            while pos.batch < self.batches:
                idx = fed[pos.batch * cfg.batch:(pos.batch + 1) * cfg.batch]
                rows = ahead.take(idx, fed[(pos.batch + 1) * cfg.batch:(pos.batch + 2) * cfg.batch]) if ahead else None
                # images/s of the whole job: every process steps through an equal shard at the same pace
                seen_here += self.step(idx, lr, rows) * self.trainer.world
                if (loss := self.trainer.loss_sum()) is not None:  # a host number: checked after every step
                    self.note(loss)
                self.emit("step", {"batch": pos.batch, "scores": self.scores,
                                   "images_per_second": seen_here / max(time.perf_counter() - epoch_start, 1e-9)})
                self.check()  # what the display's read found
                if pos.batch < self.batches and (self.stop.raised or self.checkpoint_due()):
                    self.flush()  # a loss its read finds NaN is not written, and check stops the run
                    self.check(together=bool(self.save_every) and not self.stop.raised)
                if self.stop.raised and pos.batch < self.batches:
                    raise self.interrupted(f"at epoch {pos.epoch + 1}, step {pos.step}")
        finally:
            if ahead:
                ahead.pool.shutdown(cancel_futures=True)
        running = self.read()
        self.check(together=True)
        self.end_epoch(self.epoch_record(running, lr, time.perf_counter() - epoch_start, seen_here))

    def step(self, idx: Sequence, lr: float, rows: tuple[np.ndarray, np.ndarray] | None = None) -> int:
        """One optimizer step on the samples idx (a slice of the trainer's feed, or of the order when
        batches are made on the host; `rows`: those samples, already read); returns how many there were."""
        pos, batch = self.pos, rows
        if self.cfg.augment.active:
            x, y = rows or (self.data.train.x[idx], self.data.train.y[idx])
            batch = augment_batch(x, y, self.cfg.augment, self.classes, self.aug_rng)
        self.trainer.train_step(idx, self.noise_rng, batch)
        self.trainer.update(lr * warmup_factor(pos.step, self.cfg.warmup))
        pos.batch += 1
        pos.step += 1
        return len(idx)

    def scores(self) -> dict:
        """The epoch's training loss and accuracy so far, for a progress display that redraws: one read."""
        running = self.read()
        return {"loss": running.loss / running.seen,
                "accuracy": self.accuracy(running.correct, running.seen) if self.scored else None}

    def checkpoint_due(self) -> bool:
        """Within an epoch: every `save_every` steps when given, else `save_seconds` after the last one."""
        if self.save_every:
            return self.pos.step % self.save_every == 0
        return self.files.since_save() >= self.save_seconds

    def accuracy(self, hits: int, seen: int) -> float:
        """The fraction of the predictions of `seen` samples that hits counts (each step of a sequence is one)."""
        return hits / (seen * self.predictions)

    def epoch_record(self, running: Running, lr: float, seconds: float, seen: int) -> dict:
        """The epoch's line in log.jsonl: training sums, and the validation and test scores."""
        scored, classes = self.scored, self.classes
        # the rate the epoch's last step took: during warmup, below the schedule's
        lr *= warmup_factor(self.pos.step - 1, self.cfg.warmup)
        record = {"epoch": self.pos.epoch + 1, "step": self.pos.step, "lr": lr, "seconds": seconds,
                  "images_per_second": seen / max(seconds, 1e-9),
                  "train_loss": running.loss / running.seen,
                  "train_accuracy": self.accuracy(running.correct, running.seen) if scored else None,
                  "train_top5": self.accuracy(running.top5, running.seen) if scored and classes > 5 else None}
        for name in ("val", "test"):
            split = getattr(self.data, name)
            scores = (evaluate(self.trainer.predict, self.graph, split, self.cfg.loss, classes, scored)
                      if split else {})
            for key in ("loss", "accuracy", "top5"):
                record[f"{name}_{key}"] = scores.get(key)
        return record

    def end_epoch(self, record: dict) -> None:
        pos = self.pos
        if not self.trainer.finite():
            raise self.diverged(f"the weights became NaN or infinite in epoch {pos.epoch + 1}")
        pos.epoch, pos.batch = pos.epoch + 1, 0
        self.trainer.start_tallies(Running())
        key = "val_accuracy" if self.data.val is not None and self.scored else "train_loss"
        if improves(self.best, key, record[key]):
            self.best = {"key": key, "value": record[key], "epoch": pos.epoch}
            self.files.pending_best = self.snapshot(copy=True)
        # The log line goes first: a kill between it and the checkpoint leaves a line past the
        # checkpoint, which resume trims and writes again; the other order loses the epoch's line.
        self.files.append(record)
        self.history.append(record)
        # Tiny epochs (XOR's is one step) would spend their time writing files: an epoch's end is
        # checkpointed when the last checkpoint is EPOCH_SAVE_GAP old, and always at the end or a stop.
        if (pos.epoch == self.cfg.epochs or self.stop.raised
                or (self.save_every and pos.step % self.save_every == 0)
                or self.files.since_save() >= EPOCH_SAVE_GAP):
            self.flush()
        self.emit("end", record)
        if self.stop.raised:
            raise self.interrupted(f"after epoch {pos.epoch}")


class ReadAhead:
    """Reads the next batch of lazy rows (decoded images, token windows) in a thread while the current
    one trains, so that decoding and training overlap."""

    def __init__(self, split: Split):
        self.split, self.pool = split, ThreadPoolExecutor(1, thread_name_prefix="dlc-read-ahead")
        self.pending: tuple[np.ndarray, Future] | None = None

    def read(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.split.x[idx], self.split.y[idx]

    def take(self, idx: np.ndarray, following: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows idx (read ahead by the last call when it named them), and start reading `following`."""
        ready = self.pending is not None and np.array_equal(self.pending[0], idx)
        rows = self.pending[1].result() if ready else self.read(idx)
        self.pending = (following, self.pool.submit(self.read, following)) if len(following) else None
        return rows


def train(graph: Graph, data: Data, cfg: TrainConfig, out: Path, *, meta: dict,
          checkpoint: tuple[dict, dict, dict] | None = None, save_every: int | None = None,
          save_seconds: float = SAVE_SECONDS, on_event: Callable[[str, dict], None] | None = None,
          trainer: type[Trainer] = NumpyTrainer, start: tuple[dict, dict] | None = None) -> RunResult:
    """Train `graph` on `data` (already fitted and normalised) into the run directory `out`.

    meta: what the checkpoints must carry besides the run's own state (data source, normalisation).
    checkpoint: (params, state, meta) of last.npz to continue from, or None for a fresh run.
    on_event(kind, info): "epoch" at the start of an epoch, "step" after each step, "end" with an
    epoch's record; for progress displays. A step's info["scores"]() gives the loss and accuracy so
    far: call it only to show them (on a GPU it waits for the queued steps).
    trainer: the class that does the arithmetic (see dlc.train.trainer).
    start: (params, state) to start a fresh run from (--weights: a checkpoint, an imported model).
    """
    return Run(graph, data, cfg, out, meta=meta, checkpoint=checkpoint, save_every=save_every,
               save_seconds=save_seconds, on_event=on_event or (lambda kind, info: None), trainer=trainer,
               start=start).run()
