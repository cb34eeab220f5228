"""The NumPy trainer's side of the trainer seam (dlc.train.trainer): the running sums it keeps."""

from __future__ import annotations

import numpy as np

from dlc.compile import compile_spec
from dlc.train.config import TrainConfig
from dlc.train.dataset import Split
from dlc.train.trainer import SCORE_SIZE, NumpyTrainer
from dlc.train.scoring import count_correct


def test_hits_held_back_over_steps_are_the_hits_of_each_step():
    # lr 0 leaves the weights as they are, so every step's outputs are the inference outputs of its
    # batch (no dropout or bn): the sums must be count_correct over those, batch by batch, however
    # many steps the trainer holds back before counting (batch 10 x 100 classes: 1,000 values a step)
    graph = compile_spec("input 6 -> fc 16 relu -> fc 100 softmax", file="<t>")
    trainer = NumpyTrainer.fresh(graph, TrainConfig(seed=3))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    y = rng.integers(0, 100, 400)
    y[::3] = trainer.predict(x[::3]).argmax(axis=1)  # a third the network gets right
    split = Split(x, y)
    trainer.bind(split)
    order = trainer.feed(rng.permutation(400))
    steps = 40
    assert steps * 10 * 100 > SCORE_SIZE > 10 * 100  # both held-back and counted steps happen
    expected = np.zeros(2, int)
    for k in range(steps):
        idx = order[k * 10:(k + 1) * 10]
        trainer.train_step(idx, rng)
        trainer.update(0.0)
        expected += count_correct(trainer.predict(split.x[idx]), split.y[idx], 100)
    running = trainer.tallies()
    assert (running.correct, running.top5, running.seen) == (expected[0], expected[1], 400)
    assert 0 < expected[0] < expected[1] < 400  # a test that could fail: hits and misses of both kinds
