"""dlc's losses and optimizer updates on torch tensors: the rules of dlc.engine.losses and
dlc.train.optim (their docstrings give the formulas and sources; the updates are optim's own
functions, run with torch as their array module), so that a run gives the same
numbers on either trainer. Losses return the value only; autograd supplies the gradient, and where
the NumPy loss defines its gradient otherwise (bce at clipped probabilities) the value is written so
that autograd gives the same one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlc.train import optim


def class_axis(out: torch.Tensor) -> int:
    """The axis softmax normalises: channels of an image, features of a vector, last of a sequence."""
    return -1 if out.ndim == 3 else 1


def as_rows(out: torch.Tensor) -> torch.Tensor:
    """(predictions, classes): the class axis last, every other position a row."""
    if out.ndim == 2:
        return out
    return out.movedim(class_axis(out), -1).reshape(-1, out.shape[class_axis(out)])


def is_indices(out: torch.Tensor, target: torch.Tensor) -> bool:
    return target.shape != out.shape


def per_sample(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A vector of N values against an (N, 1) output is one value per sample."""
    return target.reshape(out.shape).to(out.dtype)


def xent(logits, target):
    z = as_rows(logits)
    if is_indices(logits, target):
        return F.cross_entropy(z, target.reshape(-1).long())
    return -(as_rows(target.to(z.dtype)) * F.log_softmax(z, 1)).sum() / len(z)


def bce(prob, target):
    t, n = per_sample(prob, target), prob.shape[0]
    eps = torch.finfo(prob.dtype).eps
    # the clipped probability in the value, the unclipped one's path for the gradient (as the NumPy
    # loss: a saturated wrong answer still pulls its output back)
    p = prob + (prob.clamp(eps, 1 - eps) - prob).detach()
    return -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).sum() / n


def bce_logits(logits, target):
    return F.binary_cross_entropy_with_logits(logits, per_sample(logits, target), reduction="sum") / logits.shape[0]


def mse(out, target):
    if out.ndim == 2 and out.shape[1] > 1 and target.shape == out.shape[:1]:
        target = F.one_hot(target.long(), out.shape[1])  # class labels, one unit per class
    diff = out - per_sample(out, target)
    return 0.5 * (diff * diff).sum() / out.shape[0]


def hinge(scores, target):
    s = as_rows(scores)
    y = target.reshape(-1).long() if is_indices(scores, target) else as_rows(target).argmax(1)
    others = 1 - F.one_hot(y, s.shape[1]).to(s.dtype)
    margins = (s - s.gather(1, y[:, None]) + 1) * others
    return F.relu(margins).sum() / len(s)


LOSSES = {"xent": xent, "bce": bce, "bce_logits": bce_logits, "mse": mse, "hinge": hinge}
FINAL = {"softmax": lambda z: torch.softmax(z, class_axis(z)), "sigmoid": torch.sigmoid}


# -------------------------------------------------------------------- updates (dlc.train.optim)

def _tensorwise(rule):
    """dlc.train.optim's rule for one tensor, run on torch tensors (the trainer's update signature)."""
    def update(opt, slot, name, w, g, lr):
        rule(opt, slot, w, g, lr, torch)
    return update


def _adam(opt, slot, name, w, g, lr):
    # a copy of the gradient for the step to be written over, as the NumPy trainer writes it over its own
    w -= optim.adam_step(opt, g.clone(), slot("m"), slot("v"), torch.empty_like(g), lr, torch)


UPDATES = {"sgd": _tensorwise(optim.sgd), "momentum": _tensorwise(optim.momentum),
           "nesterov": _tensorwise(optim.nesterov), "adagrad": _tensorwise(optim.adagrad),
           "rmsprop": _tensorwise(optim.rmsprop), "adam": _adam,
           "adamw": _adam}  # adamw's decay: the trainer's update


def maxnorm_(w: torch.Tensor, c: float, axes: tuple[int, ...] | None) -> None:
    """Scale each unit's incoming weights down to norm <= c (dlc.engine.losses.maxnorm_)."""
    axes = tuple(range(1, w.ndim)) if axes is None else axes
    norms = torch.sqrt((w * w).sum(dim=axes, keepdim=True))
    w *= torch.clamp(c / torch.clamp(norms, min=torch.finfo(w.dtype).tiny), max=1)
