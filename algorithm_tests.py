"""Tests of Algorithm 1 (train.py): the order of its two phases and what training moves;
`pytest test_all.py` runs them."""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import config
import objective
import train
from channel import entropy, grid_offsets
from fixtures import assert_close_to_largest, load, networks, one_step, run, run_state
from objective import exact_mi, simclr_bound


def test_channel_step_sees_the_updated_encoder():
    """(b) differentiates (2) + lambda H(T|X) at the encoder that (a) left, not at the one before
    it. Float64 networks, (a) by SGD at rate 1, which moves (b)'s gradients by 2% of their
    largest entry; float64 sums in another order agree to n u |terms| <= 1,300 x 1.1e-16 x beta
    = 7e-13 of the terms (allowed 1e-10 of the largest entry; measured 2e-15)."""
    x = torch.rand(4, 1, 36, 36, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads, (updated, _) = one_step(x, [], peaked=True, rate=1.0)[1:]
    before, channel = networks(peaked=True)  # the networks the step started from
    expected = {}
    for name, encoder in (("updated", updated), ("before", before)):
        logp = channel(x)  # (4, 9)
        with torch.no_grad():
            z = encoder(x)[1]  # (4, 9, 50)
        objective = exact_mi(z, logp, 5.0) + 0.5 * entropy(logp)  # the defaults' beta, lambda
        expected[name] = torch.autograd.grad(-objective, list(channel.parameters()))
    assert_close_to_largest(grads["channel"], expected["updated"], 1e-10)
    apart = [(a - b).abs().max() / b.abs().max() for a, b in zip(*expected.values())]
    assert max(apart) > 1e-3  # the test can tell the two orders apart


def test_training_raises_mi_and_moves_the_channel_off_blank_crops(tmp_path):
    """60 steps on tiny data: the MI rises by more than 0.4 nats (measured 0.94 to 1.06 on five
    CPU dispatch paths), and P(T|X) moves off the crops that miss the digit, its mass there
    below 0.9 of uniform's (measured 0.71 to 0.74). Fails if the MI's sign flips, or if the
    encoder or the channel gets no MI gradient (each checked by hand on a mutated train.py)."""
    common = ["--batch-size", "16", "--lr", "3e-3", "--no-probe", "--precision", "float32",
              "--channel-warmup", "10"]
    run(tmp_path, "start", *common, "--steps", "1")
    run(tmp_path, "trained", *common, "--steps", "60")
    start, trained = run_state(tmp_path, "start"), run_state(tmp_path, "trained")
    assert trained["mi"] > start["mi"] + 0.4  # both steps ascend the MI, the encoder's most
    assert trained["blank_mass"] < 0.9 * start["blank_mass"]  # the start's channel is uniform


def test_lambda_keeps_entropy_and_bf16_training_raises_mi(tmp_path):
    """The MI alone moves P(T|X) off uniform, lambda H(T|X) keeps it near (fails if lambda's term
    is ignored or pushes the wrong way, checked by hand): H(T|X) measured 2.28 to 2.37 and 4.157
    to 4.158 of log 64 = 4.159. bf16 networks train too, on a small canvas (a CPU without bf16
    units emulates them, 10 to 20 times slower): the MI rises by 0.58."""
    common = ["--batch-size", "16", "--lr", "3e-3", "--no-probe", "--channel-warmup", "10"]
    for out, weight in (("sharp", "0"), ("flat", "5")):
        run(tmp_path, out, *common, "--steps", "60", "--entropy-weight", weight,
            "--precision", "float32")
    assert run_state(tmp_path, "sharp")["entropy"] < math.log(64) - 0.5
    assert run_state(tmp_path, "flat")["entropy"] > math.log(64) - 0.1
    for out, steps in (("start", "1"), ("bf16", "10")):
        run(tmp_path, out, *common, "--steps", steps, "--precision", "bf16", "--canvas", "36")
    assert run_state(tmp_path, "bf16")["mi"] > run_state(tmp_path, "start")["mi"] + 0.3


@pytest.mark.parametrize("objective", ["mi", "bound"])
def test_each_phase_ascends_its_objective(objective):
    """--objective mi or bound: (a)'s encoder gradient is that of -(2) or -its Jensen bound with
    P(T|X) held fixed, (b)'s channel gradient that of -(the same + lambda H(T|X)) with the codes
    held fixed (rate 0: (b)'s encoder is (a)'s). Float64, tolerances as above."""
    x = torch.rand(4, 1, 36, 36, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = one_step(x, ["--objective", objective], peaked=True)[1]
    encoder, channel = networks(peaked=True)
    estimator = simclr_bound if objective == "bound" else exact_mi
    value = estimator(encoder(x)[1], channel(x).detach(), 5.0)  # (a)
    expected = torch.autograd.grad(-value, list(encoder.parameters()))
    assert_close_to_largest(grads["encoder"], expected, 1e-10)
    logp = channel(x)  # (4, 9)
    value = estimator(encoder(x)[1].detach(), logp, 5.0) + 0.5 * entropy(logp)  # (b)
    expected = torch.autograd.grad(-value, list(channel.parameters()))
    assert_close_to_largest(grads["channel"], expected, 1e-10)


def test_a_uniform_channel_never_moves(tmp_path):
    """--channel uniform: P(T|X) stays as it started, uniform, H(T|X) = log K at every step (to
    float32's rounding of a sum of K = 64 terms, 64 u = 4e-6); the encoder trains."""
    common = ["--channel", "uniform", "--log-every", "1", "--no-probe"]
    run(tmp_path, "untrained", *common, "--steps", "0")
    run(tmp_path, "trained", *common, "--steps", "5")
    before, after = load(tmp_path, "untrained"), load(tmp_path, "trained")
    assert all(torch.equal(w, after["channel"][k]) for k, w in before["channel"].items())
    assert not torch.equal(before["encoder"]["f.2.weight"], after["encoder"]["f.2.weight"])
    assert [h["H"] for h in after["history"]] == pytest.approx([math.log(64)] * 5, abs=4e-6)


class FailOnHostSync(TorchDispatchMode):
    """Raises where an op would copy a tensor's value to the host (a GPU would wait there)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            raise AssertionError(f"a host sync inside the step: {func}")
        return func(*args, **(kwargs or {}))


STEPS = [(["--samples", "0"], 192), (["--samples", "0"], 0), (["--samples", "4"], 192),
         (["--method", "simclr"], 0)]  # (flags, DENSE_ROWS): (2) dense, then streamed


@pytest.mark.parametrize("flags, dense_rows", STEPS)
def test_a_step_never_syncs_with_the_host(flags, dense_rows, monkeypatch):
    """What a captured CUDA graph needs of a step: no value read back by the host, with (2) dense
    or streamed (dense_rows 0, as at the defaults' size). By SGD, as Adam's CPU step reads its
    step count on the host (its capturable CUDA form does not)."""
    monkeypatch.setattr(objective, "DENSE_ROWS", dense_rows)
    args = config.parse_args(["--canvas", "36", "--precision", "float32", *flags])
    encoder, channel = (net.float() for net in networks(peaked=True))
    sgd = [torch.optim.SGD(net.parameters(), lr=0.1) for net in (encoder, channel)]
    x, grid, g = torch.rand(4, 1, 36, 36), grid_offsets(36), torch.Generator().manual_seed(0)
    with FailOnHostSync():
        if args.method == "ours":
            train.alternating_step(args, encoder, channel, *sgd, x, grid, g)
        else:
            train.simclr_step(args, encoder, sgd[0], x, grid, g)
