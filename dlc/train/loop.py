"""The training run: seeded mini-batch epochs, checkpoints that resume bit for bit, logs and metrics.

Exact resume rests on three things. The sample order of an epoch is a function of (seed, epoch) alone
(data.epoch_order), so a run resumed mid-epoch skips the batches it already did. The random streams
(dropout/noise inside the network, augmentation outside it) are Generators whose states go into the
checkpoint. The optimizer's slots go in too, as exact bytes. Nothing else feeds the weights.

A run directory holds last.npz (written every `save_every` steps or `save_seconds` within an epoch,
and at the end of every epoch that ends at least EPOCH_SAVE_GAP after the previous checkpoint, and of
the last epoch), best.npz (by validation accuracy, else training loss; a copy of the best epoch's
weights waits in memory until the next checkpoint), log.jsonl (one line per epoch) and metrics.json
(at the end). Checkpoints carry in their meta what `--resume` needs to rebuild the
run: the spec text, the configuration, the data source and its normalisation.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from dlc.atomic import atomic_write
from dlc.engine.losses import LOSSES, l1_penalty, l2_penalty, maxnorm_
from dlc.engine.params import init_params, save_checkpoint
from dlc.engine.run import loss_and_grads, predict
from dlc.errors import DlcError
from dlc.graph import Graph
from dlc.train import optim
from dlc.train.augment import Augment, augment_batch, check_augment
from dlc.train.data import STREAM_AUGMENT, STREAM_NOISE, Data, Split, epoch_order
from dlc.train.schedules import make_schedule

RUN_SCHEMA = "dlc.train/1"
SAVE_SECONDS = 60.0  # default checkpoint interval within an epoch: a killed run loses at most a minute
EPOCH_SAVE_GAP = 1.0  # seconds: a shorter epoch's end is not checkpointed unless it is the last


@dataclass
class TrainConfig:
    """Every key of the spec's `train` statement (same names), plus what the command line adds."""

    loss: str = "mse"
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    batch: int = 32
    epochs: int = 10
    seed: int = 0
    weight_decay: float = 0.0
    l1: float = 0.0
    maxnorm: float = 0.0
    init: str = "he"
    init_std: float = 0.01
    schedule: str = "constant"
    step_every: int | None = None
    gamma: float | None = None
    power: float | None = None
    restart_every: int | None = None
    lr_min: float | None = None
    k: float | None = None
    balanced: bool = False
    augment: Augment = field(default_factory=Augment)


TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("balanced", "augment"))


def config_to_json(cfg: TrainConfig) -> dict:
    return asdict(cfg)


def config_from_json(doc: dict) -> TrainConfig:
    return TrainConfig(**dict(doc, augment=Augment(**doc["augment"])))


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


# ----------------------------------------------------------------------------------------- scoring

def _labels_of(y: np.ndarray) -> np.ndarray:
    return y.argmax(axis=1) if y.ndim == 2 else y


def classifies(data: Data, classes: int) -> bool:
    """Whether accuracy means something: class labels, or 0/1 targets of a one-unit output."""
    y = data.train.y
    if y.ndim == 2:
        return classes > 1
    return classes > 1 or bool(np.all((y == 0) | (y == 1)))


def count_correct(out: np.ndarray, y: np.ndarray, classes: int) -> tuple[int, int]:
    """(top-1 hits, top-5 hits); a one-unit output is right when it is on the target's side of 0.5."""
    if classes == 1:
        return int(((out.reshape(len(out)) > 0.5) == (y.reshape(len(y)) > 0.5)).sum()), 0
    labels = _labels_of(y)
    top1 = int((out.argmax(axis=1) == labels).sum())
    if classes <= 5:
        return top1, 0
    top5 = np.argpartition(-out, 5, axis=1)[:, :5]
    return top1, int((top5 == labels[:, None]).any(axis=1).sum())


def eval_loss(graph: Graph, out: np.ndarray, y: np.ndarray, loss: str) -> float:
    """The loss of inference outputs; after a final softmax, xent reads log-probabilities as logits
    (softmax(log p) = p), the same value the fused training loss computes."""
    if loss == "xent" and graph.output.kind == "softmax":
        out = np.log(np.maximum(out, np.finfo(out.dtype).tiny))
    return LOSSES[loss](out, y)[0]


def evaluate(graph: Graph, params: dict, state: dict, split: Split, loss: str, classes: int,
             scored: bool) -> dict:
    out = predict(graph, params, state, split.x, batch=256)
    top1, top5 = count_correct(out, split.y, classes)
    n = len(split)
    return {"loss": eval_loss(graph, out, split.y, loss),
            "accuracy": top1 / n if scored else None,
            "top5": top5 / n if scored and classes > 5 else None}


# ------------------------------------------------------------------------------------ run directory

def write_atomic(path: Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def append_line(path: Path, record: dict) -> None:
    """One JSON line in one write(2) on an O_APPEND descriptor: a reader never sees half a line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def read_log(path: Path, upto_epoch: int) -> list[dict]:
    """The epoch records of log.jsonl up to an epoch; lines past it (written after the checkpoint a
    run resumes from) or cut short by a kill are dropped, and the file is rewritten to match."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and r.get("epoch", math.inf) <= upto_epoch:
            records.append(r)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def _rng_from(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


def improves(best: dict, key: str, value: float) -> bool:
    """Higher accuracy or lower loss than the best so far (or no best yet)."""
    if not best:
        return True
    return value > best["value"] if key.endswith("accuracy") else value < best["value"]


def _finite(params: dict) -> bool:
    return all(np.isfinite(p).all() for p in params.values())


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop reads between steps, so a stop never tears an update in half;
    a second signal stops at once."""

    def __init__(self):
        self.raised = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they were
                pass
        return self

    def _handle(self, signum, frame):
        if self.raised is not None:
            raise KeyboardInterrupt
        self.raised = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------------------------------ the run

@dataclass
class _Running:
    """Sums over the batches of the epoch in progress (in the checkpoint, so a resumed epoch's
    training metrics count the batches done before the kill too)."""

    loss: float = 0.0
    correct: int = 0
    top5: int = 0
    seen: int = 0


def train(graph: Graph, data: Data, cfg: TrainConfig, out: Path, *, meta: dict,
          checkpoint: tuple[dict, dict, dict] | None = None, save_every: int | None = None,
          save_seconds: float = SAVE_SECONDS, on_event: Callable[[str, dict], None] | None = None) -> RunResult:
    """Train `graph` on `data` (already fitted and normalised) into the run directory `out`.

    meta: what the checkpoints must carry besides the run's own state (data source, normalisation).
    checkpoint: (params, state, meta) of last.npz to continue from, or None for a fresh run.
    on_event(kind, info): "epoch" at the start of an epoch, "step" after each step, "end" with an
    epoch's record; for progress displays.
    """
    emit = on_event or (lambda kind, info: None)
    classes = math.prod(graph.output.out_shape)
    scored = classifies(data, classes)
    check_augment(cfg.augment, graph.input.out_shape)
    if cfg.batch < 1 or cfg.epochs < 0 or cfg.lr <= 0:
        raise DlcError(f"need batch >= 1, epochs >= 0 and lr > 0 (received batch={cfg.batch}, "
                       f"epochs={cfg.epochs}, lr={cfg.lr})")
    if cfg.loss not in LOSSES or cfg.loss == "bce_logits":
        raise DlcError(f"unknown loss `{cfg.loss}` (expected xent, bce, mse or hinge)")
    if cfg.balanced and data.train.y.ndim != 1:
        raise DlcError("--balanced needs class labels, not target rows")
    lr_at = make_schedule(cfg.schedule, cfg.lr, cfg.epochs, step_every=cfg.step_every, gamma=cfg.gamma,
                          power=cfg.power, restart_every=cfg.restart_every, lr_min=cfg.lr_min, k=cfg.k)
    out.mkdir(parents=True, exist_ok=True)
    last, best_path, log_path = out / "last.npz", out / "best.npz", out / "log.jsonl"

    if checkpoint is None:
        params, state = init_params(graph, init=cfg.init, seed=cfg.seed, std=cfg.init_std)
        opt = optim.make_optimizer(cfg.optimizer, cfg.momentum, cfg.beta1, cfg.beta2, cfg.eps)
        noise_rng = np.random.default_rng([cfg.seed, STREAM_NOISE])
        aug_rng = np.random.default_rng([cfg.seed, STREAM_AUGMENT])
        pos, running, best, elapsed = Position(), _Running(), {}, 0.0
        history = []
        log_path.unlink(missing_ok=True)
    else:
        params, state, saved = checkpoint
        opt = optim.state_from_json(saved["optimizer"])
        noise_rng, aug_rng = _rng_from(saved["rng"]["noise"]), _rng_from(saved["rng"]["augment"])
        pos, running = Position(**saved["position"]), _Running(**saved["running"])
        best, elapsed = saved["best"], saved["elapsed"]
        history = read_log(log_path, pos.epoch)

    weights = optim.decayed(params)
    norm_axes = optim.maxnorm_axes(graph, params) if cfg.maxnorm else {}
    x, y = data.train.x, data.train.y
    n = len(x)
    batches = -(-n // cfg.batch)
    started = time.perf_counter()
    fixed_meta = dict(meta, schema_run=RUN_SCHEMA, spec=graph.source, file=graph.file,
                      config=config_to_json(cfg))
    pending_best = None  # (params, state, meta) of a best epoch whose checkpoint is not written yet
    last_save = started

    def snapshot(copy: bool):
        """(params, state, meta) as they are now; copies when they must outlive further steps."""
        doc = dict(fixed_meta, position=asdict(pos), running=asdict(running), best=best,
                   elapsed=elapsed + time.perf_counter() - started,
                   rng={"noise": _rng_state(noise_rng), "augment": _rng_state(aug_rng)},
                   optimizer=optim.state_to_json(opt))
        if copy:
            return {k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in state.items()}, doc
        return params, state, doc

    def flush(write_last: bool = True) -> None:
        """Write the pending best checkpoint, then last.npz; a non-finite weight is never written."""
        nonlocal pending_best, last_save
        if pending_best is not None:
            save_checkpoint(best_path, *pending_best)
            pending_best = None
        if write_last and _finite(params):
            save_checkpoint(last, *snapshot(copy=False))
        last_save = time.perf_counter()

    def result(stopped=None, message="") -> RunResult:
        r = RunResult(out, history, best, elapsed + time.perf_counter() - started, stopped, message)
        write_atomic(out / "metrics.json", json.dumps(
            {"schema": RUN_SCHEMA, "epochs": len(history), "stopped": stopped, "message": message or None,
             "seconds": r.seconds, "final": r.final, "best": best, "history": history}, indent=1))
        return r

    def diverged(what: str) -> RunResult:
        flush(write_last=False)
        return result("diverged", f"{what}; stopped, keeping the last good checkpoint {last}")

    if checkpoint is None:
        flush()  # a good checkpoint exists from the first moment, whatever happens next
    # overflow on the way to a NaN loss is reported once, by the check below, not as numpy warnings
    with _StopFlag() as stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        while pos.epoch < cfg.epochs:
            lr = lr_at(pos.epoch)
            order = epoch_order(n, cfg.seed, pos.epoch, y, cfg.balanced)
            emit("epoch", {"epoch": pos.epoch + 1, "epochs": cfg.epochs, "batches": batches,
                           "done": pos.batch, "lr": lr})
            epoch_start, seen_here = time.perf_counter(), 0
            while pos.batch < batches:
                idx = order[pos.batch * cfg.batch:(pos.batch + 1) * cfg.batch]
                xb, yb = x[idx], y[idx]
                if cfg.augment.active:
                    xb, yb = augment_batch(xb, yb, cfg.augment, classes, aug_rng)
                value, outb, grads = loss_and_grads(graph, params, state, xb, yb, cfg.loss, rng=noise_rng)
                for lam, penalty in ((cfg.weight_decay, l2_penalty), (cfg.l1, l1_penalty)):
                    if lam:
                        extra, pgrads = penalty(params, weights, lam)
                        value += extra
                        for k, g in pgrads.items():
                            grads[k] = grads[k] + g
                if not math.isfinite(value):
                    return diverged(f"the loss became {value} at epoch {pos.epoch + 1}, step {pos.step + 1} "
                                    f"(batch {pos.batch + 1} of {batches}) with lr {lr:g}")
                optim.step(opt, params, grads, lr)
                for k, axes in norm_axes.items():
                    maxnorm_(params[k], cfg.maxnorm, axes)
                top1, top5 = count_correct(outb, yb, classes)
                running.loss += value * len(idx)
                running.correct += top1
                running.top5 += top5
                running.seen += len(idx)
                seen_here += len(idx)
                pos.batch += 1
                pos.step += 1
                emit("step", {"batch": pos.batch, "loss": running.loss / running.seen,
                              "accuracy": running.correct / running.seen if scored else None,
                              "images_per_second": seen_here / max(time.perf_counter() - epoch_start, 1e-9)})
                if pos.batch < batches and (stop.raised or _due(pos, save_every, last_save, save_seconds)):
                    flush()
                if stop.raised and pos.batch < batches:
                    return result("interrupted", f"stopped by {stop.raised} at epoch {pos.epoch + 1}, "
                                                 f"step {pos.step}; continue with --resume {out}")
            seconds = time.perf_counter() - epoch_start
            record = {"epoch": pos.epoch + 1, "step": pos.step, "lr": lr, "seconds": seconds,
                      "images_per_second": seen_here / max(seconds, 1e-9),
                      "train_loss": running.loss / running.seen,
                      "train_accuracy": running.correct / running.seen if scored else None,
                      "train_top5": running.top5 / running.seen if scored and classes > 5 else None}
            for name in ("val", "test"):
                split = getattr(data, name)
                scores = evaluate(graph, params, state, split, cfg.loss, classes, scored) if split else {}
                for key in ("loss", "accuracy", "top5"):
                    record[f"{name}_{key}"] = scores.get(key)
            if not _finite(params):
                return diverged(f"the weights became NaN or infinite in epoch {pos.epoch + 1}")
            pos.epoch, pos.batch, running = pos.epoch + 1, 0, _Running()
            key = "val_accuracy" if data.val is not None and scored else "train_loss"
            if improves(best, key, record[key]):
                best = {"key": key, "value": record[key], "epoch": pos.epoch}
                pending_best = snapshot(copy=True)
            # Tiny epochs (XOR's is one step) would spend their time writing files: an epoch's end is
            # checkpointed when the last checkpoint is EPOCH_SAVE_GAP old, and always at the end or a stop.
            if (pos.epoch == cfg.epochs or stop.raised or (save_every and pos.step % save_every == 0)
                    or time.perf_counter() - last_save >= EPOCH_SAVE_GAP):
                flush()
            append_line(log_path, record)
            history.append(record)
            emit("end", record)
            if stop.raised:
                return result("interrupted", f"stopped by {stop.raised} after epoch {pos.epoch}; "
                                             f"continue with --resume {out}")
    return result()


def _due(pos: Position, save_every: int | None, last_save: float, seconds: float) -> bool:
    """A checkpoint is due every `save_every` steps when given, else `seconds` after the last one."""
    if save_every:
        return pos.step % save_every == 0
    return time.perf_counter() - last_save >= seconds
