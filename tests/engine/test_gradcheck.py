"""`dlc gradcheck`'s numerics and refusals (issue 9): correct gradients of sharply curved networks pass
1e-6, wrong ones fail, a NaN forward pass fails, and flag values it cannot use are refused."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dlc import machine
from dlc.cli import main
from dlc.engine.kernels import KERNELS

# bn over two samples curves sharply: plain central differences at step 1e-5 erred by ~3e-6 here
BN_TWICE = "input 3@6x6 -> conv 4@3x3 bn -> flatten -> bn -> fc 5"


def gradcheck(*args):
    return CliRunner().invoke(main, ["gradcheck", *map(str, args)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_bn_flatten_bn_fc_at_batch_2_passes_1e_6(seed):
    r = gradcheck("-e", BN_TWICE, "--all", "--batch", 2, "--seed", seed)
    assert r.exit_code == 0, r.output
    assert "5 of 5 layers within relative error 1e-06" in r.output


def test_a_slightly_wrong_bn_backward_still_fails(monkeypatch):
    forward = KERNELS["bn"]

    def wrong_bn(attrs, params, state, xs, ctx):
        y, backward = forward(attrs, params, state, xs, ctx)

        def wrong(dy):
            dxs, grads = backward(dy)
            return [dx * (1 + 1e-4) for dx in dxs], grads  # off by 1e-4, a hundred times the tolerance
        return y, wrong

    monkeypatch.setitem(KERNELS, "bn", wrong_bn)
    r = gradcheck("-e", BN_TWICE, "--all")
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output and "conv1" in r.output.splitlines()[-1]


def test_a_nan_forward_pass_fails():
    # noise of sigma 1e308 overflows fc's sums to infinity, and the loss to NaN or infinity
    r = gradcheck("-e", "input 4 -> noise 1e308 -> fc 3")
    assert r.exit_code == 1, r.output
    assert "PASS" not in r.output and "not finite" in r.output


@pytest.mark.parametrize("flag, value, said", [
    ("--tol", "nan", "nan is not a finite number"),
    ("--tol", "-1", "-1 is not >= 0"),
    ("--seed", "-1", "-1 is not in the range x>=0"),
    ("--batch", "0", "0 is not in the range x>=1"),
])
def test_flag_values_it_cannot_use_are_refused_as_one_error_line(flag, value, said):
    r = gradcheck("-e", "input 4 -> fc 2", flag, value)
    assert r.exit_code == 2
    assert said in r.output and r.output.startswith("error: ") and "Usage:" not in r.output


def test_a_batch_that_cannot_fit_is_refused_with_the_figure(monkeypatch):
    monkeypatch.setattr(machine, "available_bytes", lambda: 2**30)
    r = gradcheck("-e", "input 4 -> fc 2", "--batch", 10**9)
    # float64: 2 x 10 weights (and gradients) + 10^9 samples x (4 inputs + 2 outputs) = 6e9 + 20 values
    # = 48,000,000,160 bytes = 44.70 GiB
    assert r.exit_code == 2
    assert "gradcheck --batch 1000000000 needs at least 44.70 GiB of memory; 1.00 GiB is available" in r.output


def test_signal_and_volume_nets_pass_and_a_signal_output_is_not_taken_for_a_sequence():
    # issue 28: 1-D and 3-D conv, pools and bn through the whole network; a softmax over a signal's
    # channels is checked with mse, since xent would read its length as the classes
    for spec in ("input 2@12 -> conv 3@3/2 pad=same bn relu -> maxpool 2 ceil -> avgpool 2 -> fc 3 softmax",
                 "input 2@3x5x5 -> conv 3@3 pad=1 bn relu -> maxpool 1x2x2 -> dwconv 2 -> gap -> fc 3 softmax"):
        r = gradcheck("-e", spec)
        assert r.exit_code == 0 and "within relative error 1e-06" in r.output, r.output
    r = gradcheck("-e", "input 1@20 -> conv 3@3 pad=1 softmax")
    assert r.exit_code == 2 and "the output 3@20 is a signal: check it with --loss mse" in r.output, r.output
    assert gradcheck("-e", "input 1@20 -> conv 3@3 pad=1 softmax", "--loss", "mse").exit_code == 0
