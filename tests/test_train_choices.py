"""The names the command line offers (dlc.choices, numpy-free) against the engine tables that run them,
and the seams around the training loop: no side effect at import, the trainer as a swappable part."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dlc import choices
from dlc.compile import compile_spec
from dlc.engine import losses, params
from dlc.normalize import normalizer
from dlc.train import optim
from dlc.train.config import TrainConfig
from dlc.train.dataset import Data, Split
from dlc.train.trainer import NumpyTrainer
from dlc.train.loop import train
from dlc.train.schedules import make_schedule


def test_every_loss_offered_has_a_kernel_and_only_the_fused_one_is_hidden():
    assert set(losses.LOSSES) - set(choices.LOSSES) == {"bce_logits"}


def test_every_init_offered_is_one_init_params_knows():
    assert set(params.INITS) == set(choices.INITS)


@pytest.mark.parametrize("kind", list(choices.OPTIMIZER_SLOTS))
def test_an_optimizer_keeps_the_slots_the_memory_estimate_counts(kind):
    # One update of one weight: the arrays the optimizer then holds are named "<slot>:<param>".
    assert set(optim.UPDATES) == set(choices.OPTIMIZER_SLOTS)
    opt = optim.make_optimizer(kind)
    w = {"fc.W": np.ones((2, 3), np.float32)}
    optim.step(opt, w, {"fc.W": np.full((2, 3), 0.5, np.float32)}, lr=0.1)
    assert sorted(k.split(":")[0] for k in opt.slots) == sorted(choices.OPTIMIZER_SLOTS[kind])


@pytest.mark.parametrize("kind", choices.SCHEDULES)
def test_every_schedule_offered_starts_at_the_base_rate(kind):
    # all seven published forms give eta0 at t = 0 (lr_min defaults to 0, so cosine and linear too)
    assert make_schedule(kind, 0.1, 10)(0) == pytest.approx(0.1)


@pytest.mark.parametrize("kind", choices.NORMALIZE_KINDS)
def test_every_normalisation_offered_is_computed(kind):
    assert normalizer(np.arange(12, dtype=np.float32).reshape(4, 3), kind)["kind"] == kind


def test_default_loss_is_xent_after_softmax_else_mse():
    assert choices.default_loss(compile_spec("input 4 -> fc 3 softmax")) == "xent"
    assert choices.default_loss(compile_spec("input 4 -> fc 1 sigmoid")) == "mse"


def python(code: str, **env) -> str:
    import os
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout.strip()


def test_the_train_command_and_the_names_load_without_numpy():
    assert python("import sys, dlc.choices, dlc.commands.train; print('numpy' in sys.modules)") == "False"


def test_importing_the_kernels_leaves_the_allocator_alone():
    # mallopt is process-wide: only the commands that train call it, through dlc.engine.allocator
    assert python("import sys, dlc.engine.kernels, dlc.train.loop; "
                  "print('dlc.engine.allocator' in sys.modules)") == "False"


def test_dlc_mallopt_0_turns_the_allocator_tuning_off():
    assert python("from dlc.engine.allocator import tune_allocator; print(tune_allocator())",
                  DLC_MALLOPT="0") == "False"


class CountingTrainer(NumpyTrainer):
    """The NumPy trainer, recording which of the trainer's methods the loop calls."""

    calls: list[str] = []

    def loss_and_grads(self, x, y, rng):
        self.calls.append("loss_and_grads")
        return super().loss_and_grads(x, y, rng)

    def update(self, lr):
        self.calls.append("update")
        super().update(lr)


def test_the_loop_runs_through_the_engine_seam_and_gets_the_same_weights(tmp_path):
    graph = compile_spec("input 2 -> fc 4 tanh -> fc 1 sigmoid")
    x = np.random.default_rng(0).random((10, 2), dtype=np.float32)
    data = Data(Split(x, (x.sum(axis=1) > 1).astype(np.int64)), name="toy")
    cfg = TrainConfig(loss="bce", optimizer="adam", lr=0.05, batch=4, epochs=2)
    plain = train(graph, data, cfg, tmp_path / "plain", meta={})
    counted = train(graph, data, cfg, tmp_path / "counted", meta={}, trainer=CountingTrainer)
    assert CountingTrainer.calls == ["loss_and_grads", "update"] * 6  # 2 epochs of ceil(10 / 4) steps
    assert counted.history[-1]["train_loss"] == plain.history[-1]["train_loss"]
