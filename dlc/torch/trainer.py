"""The torch trainer: the run's arithmetic in PyTorch, behind dlc.train.trainer's seam.

The network is the file `dlc export --format pytorch` writes (dlc.torch.export), run as it is. The
trainer keeps dlc's rules, not torch's defaults: the losses and updates of dlc.torch.rules, weight
decay and L1 as penalties on the weights dlc.train.optim names (not biases, not bn) or adamw's
decoupled decay in the update, the loss gradient clipped before the penalties', max-norm after each
update, and the layers up to --freeze run as at inference (bn on its running statistics, no dropout
or noise) and left as they are. Checkpoints stay dlc's: weights and optimizer slots go out in dlc's
names and layouts, so a run resumes on either trainer (--engine numpy or torch).

Dropout and noise draw from torch's generator, seeded once from the NumPy stream the loop hands
over (plus the rank) and carried in the optimizer state, so a resumed run draws what it would have.

A step never waits for the device. On CUDA the training split is copied to the device once when it
takes at most DEVICE_SHARE of its free memory, each epoch's order once, and a step's batch is gathered
there. A bigger split stays on the host: each batch is gathered there and copied over from pinned
memory without waiting; so are augmented batches, made on the host. On the CPU NumPy gathers the
batch (several times faster than torch's index_select there) and torch reads it in place. The loss,
top-1 and top-5 hits and samples add up on the device, and the host reads the four sums only when the
loop asks (progress, checkpoints, an epoch's end).

Under torchrun (WORLD_SIZE > 1) the network is wrapped in DistributedDataParallel (gloo on the CPU,
nccl on CUDA): gradients are averaged over the processes, and each step's four sums are added up over
them on the device, so every rank holds every shard's sums and may read them at any step; the loop
gives each rank its shard of the epoch's order.
"""

from __future__ import annotations

import base64
import os
import warnings

import numpy as np
import torch

from dlc.engine.run import FUSED_LOSSES, freeze_point, frozen_params
from dlc.errors import DlcError
from dlc.graph import Graph, Network
from dlc.torch import launched
from dlc.torch.export import comment_text, identifiers, pytorch_source, state_names
from dlc.torch.rules import FINAL, LOSSES, UPDATES, maxnorm_
from dlc.train import optim
from dlc.train.config import TrainConfig
from dlc.train.dataset import ByInput, Split
from dlc.train.trainer import Running, fresh_optimizer, starting_weights

DEVICES = ("auto", "cpu", "cuda")
PREDICT_BATCH = 256
DEVICE_SHARE = 0.25  # of the device's free memory, that a training split may take; the rest is the steps'


def pick_device(device: str) -> torch.device:
    """cpu, cuda (or a clear reason why not), or auto: CUDA when torch sees a GPU."""
    if device not in DEVICES:
        raise DlcError(f"unknown device `{device}` (expected {', '.join(DEVICES)})")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DlcError(f"--device cuda: {cuda_missing()}")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def cuda_missing() -> str:
    """Why torch sees no GPU, in words a user can act on."""
    if torch.version.cuda is None:
        return (f"this torch ({torch.__version__}) is a CPU build; install a CUDA build of torch "
                "(https://pytorch.org/get-started/locally/)")
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU or no driver"


def network(graph: Graph) -> dict:
    """The generated file of `graph`, run: its Net class and its helpers by name."""
    scope: dict = {}
    # the name as the generated file's comment writes it: a checkpoint's metadata may hold NUL
    exec(compile(pytorch_source(graph), f"<dlc pytorch: {comment_text(graph.file)}>", "exec"), scope)
    return scope


def torch_trainer(device: str = "auto") -> type[TorchTrainer]:
    """The TorchTrainer class for a device, as `train(..., trainer=...)` takes it."""
    return type("TorchTrainer", (TorchTrainer,), {"device_name": device})


def hits(out: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """dlc.train.scoring.count_correct on the device: (top-1 hits, top-5 hits) as tensors."""
    none = out.new_zeros((), dtype=torch.int64)
    if classes == 1:
        return ((out.reshape(-1) > 0.5) == (y.reshape(-1) > 0.5)).sum(), none
    labels = y.argmax(-1) if y.ndim == out.ndim else y
    top1 = (out.argmax(-1) == labels).sum()
    if classes <= 5:
        return top1, none
    # the label's rank as count_correct has it: classes above it, then ties at a lower index
    score = out.gather(-1, labels[..., None])
    earlier = torch.arange(classes, device=out.device) < labels[..., None]
    rank = (out > score).sum(-1) + ((out == score) & earlier).sum(-1)
    return top1, (rank < 5).sum()


def each(x, fn):
    """fn on one input's array, or on each of several inputs' (a ByInput, or the dict a batch of it is),
    giving a dict by input name."""
    if isinstance(x, (ByInput, dict)):
        return {label: fn(a) for label, a in (x.arrays if isinstance(x, ByInput) else x).items()}
    return fn(x)


class TorchTrainer:
    """dlc's training step in PyTorch; build it with torch_trainer(device)."""

    device_name = "auto"

    def __init__(self, start: Network, cfg: TrainConfig, opt: optim.Optimizer, rng_state: str | None):
        graph, params, state = start.graph, start.params, start.state
        self.graph, self.cfg, self.opt = graph, cfg, opt
        self.device = pick_device(self.device_name)
        self.rank, self.world = launched()
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.dtype = torch.float64 if any(v.dtype == np.float64 for v in params.values()) else torch.float32
        scope = network(graph)
        self.net = scope["Net"]().to(self.dtype)
        self.table = self.net.DLC_TENSORS
        self.to_torch, self.to_dlc = scope["to_torch_layout"], scope["to_dlc_layout"]
        self.balance_loss = scope["balance_loss"]
        self.net.from_dlc({k: torch.from_numpy(np.asarray(v)) for k, v in {**params, **state}.items()})
        self.net.to(self.device)
        self.model = self.net
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.state_names = set(state_names(graph))
        self.params = dict(self.net.named_parameters())  # by torch name
        dlc_of = {key: name for name, key, *_ in self.table}
        # transfer learning, as the NumPy trainer: the layers up to cfg.freeze run as at inference and keep
        # their weights
        frozen = freeze_point(graph, cfg.freeze) if cfg.freeze else None
        self.frozen_modules = self.frozen_layers(graph, frozen)
        fixed = frozen_params(graph, frozen)
        self.trained = {k: p for k, p in self.params.items() if dlc_of[k] not in fixed}
        if frozen and not self.trained:
            raise DlcError(f"freeze={cfg.freeze} leaves no layer with weights to train")
        for k, p in self.params.items():
            p.requires_grad_(k in self.trained)
        weights = set(optim.decayed(graph, params))  # the one rule: the kinds' tensor roles
        self.decayed = [k for k in self.trained if dlc_of[k] in weights]
        axes = optim.maxnorm_axes(graph, params) if cfg.maxnorm else {}
        # torch's recurrent matrices are dlc's, one direction apiece: the trailing axes carry over
        self.norm_axes = {k: axes[dlc_of[k]] for k in self.decayed if dlc_of[k] in axes}
        self.slots: dict[str, torch.Tensor] = {}
        by_slot: dict[str, dict] = {}
        for key, a in opt.slots.items():
            slot, name = key.split(":", 1)
            by_slot.setdefault(slot, {})[name] = torch.from_numpy(a)
        for slot, arrays in by_slot.items():
            for k, t in self.to_torch(self.table, arrays).items():
                self.slots[f"{slot}:{k}"] = t.to(self.device, self.dtype).clone()
        self.fused = FUSED_LOSSES.get((cfg.loss, graph.output.kind))
        self.classes = graph.output.out_shape[-1]
        # the bound training split: tensors on the device (several inputs: a dict of them), or host arrays
        self.x = self.y = None
        self.sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # Running's four, in order
        self.rng_restored = rng_state is not None
        if rng_state is not None:
            self.set_rng(rng_state)

    @classmethod
    def fresh(cls, graph: Graph, cfg: TrainConfig, start: tuple[dict, dict] | None = None) -> TorchTrainer:
        return cls(starting_weights(graph, cfg, start), cfg, fresh_optimizer(cfg), None)

    def frozen_layers(self, graph: Graph, frozen: str | None) -> list[torch.nn.Module]:
        """The modules of the nodes up to and including `frozen`, which run in eval mode while training
        (bn on its running statistics, no dropout or noise: dlc.engine.run's frozen steps)."""
        if not frozen:
            return []
        nodes = graph.nodes[1:graph.nodes.index(graph.node(frozen)) + 1]
        idents = identifiers(graph)
        return [m for n in nodes if (m := getattr(self.net, idents[n.name], None)) is not None]

    @classmethod
    def resume(cls, net: Network, cfg: TrainConfig, optimizer: dict) -> TorchTrainer:
        return cls(net, cfg, optim.state_from_json(optimizer), optimizer.get("torch_rng"))

    # ------------------------------------------------------------------------------ the step

    def bind(self, split: Split) -> None:
        self.x, self.y = split.x, split.y
        if self.fits_on_device(split.x.nbytes + split.y.nbytes):
            self.x = each(split.x, lambda a: self.host_tensor(a).to(self.device))
            self.y = self.host_tensor(split.y).to(self.device)

    def fits_on_device(self, nbytes: int) -> bool:
        """Whether a training split of nbytes goes to the device: on CUDA, within DEVICE_SHARE of its free memory."""
        return self.device.type == "cuda" and nbytes <= DEVICE_SHARE * torch.cuda.mem_get_info(self.device)[0]

    def feed(self, order: np.ndarray) -> torch.Tensor | np.ndarray:
        """The order on the device with a split there, else on the host where the batches are gathered."""
        return torch.from_numpy(order).to(self.device) if torch.is_tensor(self.y) else order

    @staticmethod
    def host_tensor(a: np.ndarray) -> torch.Tensor:
        """A NumPy array as a tensor sharing its memory (a copy only when it is not contiguous)."""
        with warnings.catch_warnings():  # a read-only array (a memory-mapped file) is only ever read
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(np.ascontiguousarray(a))

    def to_device(self, a: np.ndarray) -> torch.Tensor:
        """A host batch on the device: on CUDA from pinned memory, without waiting for the copy."""
        t = self.host_tensor(a)
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def inputs(self, x: torch.Tensor | dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """A batch as forward's arguments, one per input in the spec's order (a dict holds several by
        name): token ids as int64, features in the weights' dtype."""
        xs = [x[n.name] for n in self.graph.inputs] if isinstance(x, dict) else [x]
        return [t.long() if n.dtype.startswith("int") else t.to(self.dtype) for n, t in zip(self.graph.inputs, xs)]

    def train_step(self, idx, rng: np.random.Generator, batch: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        if batch is not None:  # augmented on the host: copied over, step by step
            xb, yb = map(self.to_device, batch)
        elif torch.is_tensor(self.y):
            xb, yb = each(self.x, lambda t: t.index_select(0, idx)), self.y.index_select(0, idx)
        else:
            xb, yb = each(self.x[idx], self.to_device), self.to_device(self.y[idx])
        xb = self.inputs(xb)
        if not yb.is_floating_point():
            yb = yb.long()
        value, out = self.loss_and_grads(xb, yb, rng)
        top1, top5 = hits(out, yb, self.classes)
        n = len(yb)
        sums = torch.stack([value.detach().double() * n, top1.double(), top5.double(),
                            value.new_full((), n, dtype=torch.float64)])
        if self.world > 1:  # every shard's sums on every rank: a read needs no collective of its own
            torch.distributed.all_reduce(sums)
        self.sums += sums

    def loss_sum(self) -> None:
        return None  # on the device: read with the others, in tallies

    def tallies(self) -> Running:
        loss, correct, top5, seen = self.sums.tolist()  # the one wait for the device
        return Running(loss, round(correct), round(top5), round(seen))

    def start_tallies(self, running: Running) -> None:
        self.sums = torch.tensor([running.loss, running.correct, running.top5, running.seen], dtype=torch.float64,
                                 device=self.device)

    def loss_and_grads(self, xb: list[torch.Tensor], yb: torch.Tensor,
                       rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss with penalties and the network's outputs, on the device; the gradients in .grad."""
        if not self.rng_restored:
            torch.manual_seed(int(rng.integers(2 ** 62)) + self.rank)
            self.rng_restored = True
        self.model.train()
        for m in self.frozen_modules:
            m.eval()  # bn on its running statistics, which stay as they are; no dropout or noise
        if self.fused:
            logits = self.model(*xb, logits=True)
            value = LOSSES[self.fused](logits, yb)
            out = FINAL[self.graph.output.kind](logits.detach())
        else:
            out = self.model(*xb)
            value = LOSSES[self.cfg.loss](out, yb)
            out = out.detach()
        value = value + self.balance_loss(self.net)  # a mixture's load balancing, as the NumPy engine adds it
        for p in self.params.values():
            p.grad = None
        value.backward()
        if self.cfg.clip:  # the loss gradient alone, before the penalties' (optim.clip_global_norm)
            self.clip(self.cfg.clip)
        decay = 0.0 if self.opt.weight_decay else self.cfg.weight_decay  # adamw decays in update, not the loss
        penalty = 0.0
        if decay:
            penalty = penalty + 0.5 * decay * sum((self.params[k] ** 2).sum() for k in self.decayed)
        if self.cfg.l1:
            penalty = penalty + self.cfg.l1 * sum(self.params[k].abs().sum() for k in self.decayed)
        if torch.is_tensor(penalty):
            # autograd.grad, not backward: the penalty's gradient joins the clipped one, outside DDP's averaging
            tensors = [self.params[k] for k in self.decayed]
            for w, g in zip(tensors, torch.autograd.grad(penalty, tensors)):
                w.grad = g if w.grad is None else w.grad + g
            value = value + penalty
        return value.detach(), out

    def clip(self, max_norm: float) -> None:
        """Scale the loss gradient to global norm max_norm when it is longer (optim.clip_global_norm),
        deciding on the device: the host never waits for the norm."""
        grads = [p.grad for p in self.trained.values() if p.grad is not None]
        norm = torch.stack([(g * g).sum() for g in grads]).double().sum().sqrt()
        scale = (max_norm / (norm + 1e-6)).float()  # the NumPy trainer's float32 factor
        scale = torch.where(norm > max_norm, scale, torch.ones_like(scale))
        for g in grads:
            g *= scale

    def update(self, lr: float) -> None:
        opt = self.opt
        opt.t += 1
        update = UPDATES[opt.kind]
        with torch.no_grad():
            if opt.weight_decay:  # adamw: decoupled decay before adam's step (optim.step)
                shrink = float(np.float32(1 - lr * opt.weight_decay))
                for key in self.decayed:
                    self.params[key] *= shrink
            for key, w in self.trained.items():
                def slot(name, key=key, w=w):
                    s = self.slots.get(f"{name}:{key}")
                    if s is None:
                        s = self.slots[f"{name}:{key}"] = torch.zeros_like(w)
                    return s
                update(opt, slot, key, w, w.grad, lr)
            for key, axes in self.norm_axes.items():
                maxnorm_(self.params[key], self.cfg.maxnorm, axes)

    def predict(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        self.net.eval()  # the bare module: DDP's forward would broadcast buffers, a collective
        x = ByInput(x) if isinstance(x, dict) else x  # several inputs' arrays, sliced together
        outs = []
        with torch.no_grad():
            for start in range(0, len(x), PREDICT_BATCH):
                outs.append(self.net(*self.inputs(each(x[start:start + PREDICT_BATCH], self.to_device))))
        if not outs:
            return np.zeros((0, *self.graph.output.out_shape), dtype=np.float32)
        return torch.cat(outs).cpu().numpy()  # one wait for the device, not one a batch

    def finite(self) -> bool:
        # one device-to-host transfer for all the weights
        return not self.params or bool(torch.stack([torch.isfinite(p).all() for p in self.params.values()]).all())

    # ---------------------------------------------------------------------- state, dlc's way

    def weights(self, copy: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        tensors = self.net.to_dlc()  # detached copies
        params, state = {}, {}
        for name, t in tensors.items():
            (state if name in self.state_names else params)[name] = t.cpu().numpy()
        return params, state

    def optimizer_state(self) -> dict:
        by_slot: dict[str, dict] = {}
        for key, t in self.slots.items():
            slot, name = key.split(":", 1)
            by_slot.setdefault(slot, {})[name] = t
        slots = {f"{slot}:{name}": t.cpu().numpy()
                 for slot, tensors in by_slot.items() for name, t in self.to_dlc(self.table, tensors).items()}
        saved = optim.Optimizer(self.opt.kind, self.opt.momentum, self.opt.beta1, self.opt.beta2, self.opt.eps,
                                slots, self.opt.t, self.opt.weight_decay)
        return dict(optim.state_to_json(saved), torch_rng=self.rng_state())

    def close(self) -> None:
        """Nothing to let go of: the device's memory goes with the trainer."""

    def rng_state(self) -> str:
        """torch's generator for this device, as base64 bytes."""
        state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.get_rng_state()
        return base64.b64encode(bytes(state.tolist())).decode("ascii")

    def set_rng(self, text: str) -> None:
        state = torch.tensor(list(base64.b64decode(text)), dtype=torch.uint8)
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)
