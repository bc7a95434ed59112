"""Tests of the poster's sampled Algorithm 1 (sampling.py); `pytest test_all.py` runs them."""
import itertools
import math

import numpy as np
import pytest
import torch

import train
from fixtures import (assert_close_to_largest, mi_loop, networks, one_step, random_inputs, run,
                      run_state)
from objective import exact_mi
from sampling import draw_from_channel, draw_uniform, mi_of_draws

# float64: the two sides' sums differ in order (crops encoded one by one or in one pass), by at
# most n u |terms| = (B K)^2 x 1.1e-16 x beta = 4e-13 of the terms here: allowed 1e-10 of the
# largest entry, and 1e-10 of beta for an MI near 0 (measured: the MI 1e-16 apart, the gradients
# to 1e-13 of their largest entry)
CLOSE = 1e-10


@pytest.mark.parametrize("weights", ["self-normalized", "unnormalized"])
def test_sampled_step_is_exact_where_draws_enumerate_the_grid(monkeypatch, weights):
    """Where (b)'s m = K draws enumerate the grid, both weightings are P(T|X) and (b) is the
    exact sum; (a) is mi_of_draws of those crops' codes. Fails if a view is encoded from another
    crop or image, or if lambda H(T|X) is missing or pushes the wrong way (checked by hand)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 36, 36, generator=g, dtype=torch.float64)  # (3, 1, 36, 36): K = 9
    order = torch.rand(3, 9, generator=g).argsort(1)  # (3, 9) every crop once, in its own order
    monkeypatch.setattr(torch, "multinomial", lambda p, m, **_: order)
    mi = one_step(x, ["--samples", "9", "--weights", weights])[0]
    z = networks()[0](x)[1]  # (3, 9, 50) one pass over the canvases
    expected = mi_of_draws(z[torch.arange(3)[:, None], order], 5.0)
    # the MI is a difference of terms of size beta = 5 that nearly cancel at initialization: its
    # rounding is bounded relative to beta, not to the MI (about 1e-6 here)
    assert (mi - expected).abs() <= CLOSE * 5.0, (mi - expected).abs()
    lam = 0.5
    channel_grads = {}  # {(samples, lambda): the channel's gradients}
    for samples in ("0", "9"):
        for weight in (lam, 0.0):
            flags = ["--samples", samples, "--entropy-weight", str(weight)]
            if samples != "0":
                flags += ["--weights", weights]
            _, grads, (_, channel) = one_step(x, flags, peaked=True)
            channel_grads[samples, weight] = grads["channel"]
    assert_close_to_largest(channel_grads["9", lam], channel_grads["0", lam], CLOSE)
    H = torch.distributions.Categorical(logits=channel.net(x).flatten(1)).entropy().mean()
    dH = torch.autograd.grad(H, list(channel.parameters()))  # independent of channel.entropy
    for samples in ("0", "9"):  # the channel's loss is -(MI + lambda H(T|X))
        with_lambda, without = channel_grads[samples, lam], channel_grads[samples, 0.0]
        difference = [a - b for a, b in zip(with_lambda, without)]
        assert_close_to_largest(difference, [-lam * d for d in dH], CLOSE)


def test_draws_follow_the_channel_and_estimates_near_the_exact_mi(monkeypatch):
    drawn = []
    views = train.views

    def spy(encoder, x, grid, c, rows):  # the crops each phase of the step encodes
        drawn.append(c[rows])
        return views(encoder, x, grid, c, rows)
    monkeypatch.setattr(train, "views", spy)
    x = torch.rand(1, 1, 36, 36, generator=torch.Generator().manual_seed(0))  # (1, 1, 36, 36)
    x = x.expand(1000, 1, 36, 36)  # the same canvas 1,000 times, 4 draws each
    channel = one_step(x, ["--samples", "4"], peaked=True)[2][1]
    p = channel(x[:1]).exp()[0]  # (9,) its P(T|x)
    for c, expected in zip(drawn, (p, torch.full_like(p, 1 / 9))):  # (a) from P, (b) uniform
        frequency = torch.bincount(c.flatten(), minlength=9) / c.numel()  # (9,)
        assert (frequency - expected).abs().max() < 0.02  # 2.5 sd of 4,000 draws at most
    assert p.max() > 0.3  # the peaked channel is far from uniform
    assert (drawn[1].sort(1).values.diff(dim=1) > 0).all()  # (b) draws distinct crops
    z, logp = random_inputs(B=4, K=16, d=5, peak=2.0)
    image = torch.arange(4)[:, None]  # (4, 1)
    c = draw_from_channel(logp, 5, torch.Generator().manual_seed(0))  # (4, 5)
    uniform = torch.full((4, 5), -math.log(5), dtype=z.dtype)  # (4, 5) each draw 1/m
    expected = mi_loop(z[image, c], uniform, 5.0, leave_out_self=True)
    assert mi_of_draws(z[image, c], 5.0).item() == pytest.approx(expected, rel=1e-10)
    c, logw = draw_uniform(logp, 5, torch.Generator().manual_seed(0))  # (4, 5)
    w = np.take_along_axis(logp.exp().numpy(), c.numpy(), 1)  # (4, 5) P(t|x) of the drawn crops
    self_normalized = torch.from_numpy(np.log(w / w.sum(1, keepdims=True)))
    estimate = exact_mi(z[image, c], logw, 5.0).item()
    assert estimate == pytest.approx(mi_loop(z[image, c], self_normalized, 5.0), rel=1e-10)
    g = torch.Generator().manual_seed(0)
    errors = []
    for m in (2, 4, 16, 64):  # (a)
        estimates = [mi_of_draws(z[image, draw_from_channel(logp, m, g)], 5.0) for _ in range(200)]
        errors.append(abs(torch.stack(estimates).mean() - exact_mi(z, logp, 5.0)).item())
    for weights, m in itertools.product(("self-normalized", "unnormalized"), (2, 8, 16)):  # (b)
        estimates = []
        for _ in range(200):
            c, logw = draw_uniform(logp, m, g, weights)  # (4, m) each
            estimates.append(exact_mi(z[image, c], logw, 5.0))
        errors.append(abs(torch.stack(estimates).mean() - exact_mi(z, logp, 5.0)).item())
    assert errors[0] > errors[1] > errors[2] > errors[3]  # (a) as m grows
    assert errors[4] > errors[5] > errors[6] and errors[6] < 1e-12  # (b), exact at m = K
    assert errors[7] > errors[8] > errors[9] and errors[9] < 1e-12


def test_unnormalized_weights_are_unbiased_inside_an_expectation(monkeypatch):
    """The outer expectation E_{T|x} f = sum_k p[i,k] f(k): over the 6 equally likely pairs of
    K = 4 crops drawn uniformly, sum_a w[i,a] f(c[i,a]) averages to it exactly with the weights
    K p / m, not with the self-normalized ones (a ratio of estimates)."""
    logp = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64).log()  # (1, 4)
    f = torch.tensor([1.0, -2.0, 5.0, 3.0], dtype=torch.float64)  # (4,)
    averages = {}
    for weights in ("unnormalized", "self-normalized"):
        total = 0.0
        for pair in itertools.combinations(range(4), 2):
            c = torch.tensor([pair])  # (1, 2)
            monkeypatch.setattr(torch, "multinomial", lambda *_, **__: c)
            logw = draw_uniform(logp, 2, None, weights)[1]  # (1, 2)
            total += (logw.exp() * f[c]).sum().item() / 6
        averages[weights] = total
    assert averages["unnormalized"] == pytest.approx((logp.exp() * f).sum().item(), rel=1e-12)
    assert abs(averages["self-normalized"] - (logp.exp() * f).sum().item()) > 0.1


def test_sampled_training_raises_mi(tmp_path):
    """60 steps of m = 16 on tiny data raise the MI by more than 0.3 nats (measured 0.63); fails
    if the MI's sign flips or the encoder gets no gradient. (Its channel's mass on blank crops
    falls to 0.84 of uniform's, the exact sum's to 0.74.)"""
    common = ["--batch-size", "16", "--lr", "3e-3", "--no-probe", "--precision", "float32",
              "--channel-warmup", "10", "--samples", "16"]
    run(tmp_path, "start", *common, "--steps", "1")
    run(tmp_path, "trained", *common, "--steps", "60")
    assert run_state(tmp_path, "trained")["mi"] > run_state(tmp_path, "start")["mi"] + 0.3
