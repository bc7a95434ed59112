"""Tests of the poster's sampled Algorithm 1 (sampling.py); `pytest test_all.py` runs them."""
import numpy as np
import pytest
import torch

import train
from fixtures import mi_loop, one_step, random_inputs
from objective import exact_mi
from sampling import draw_from_channel, draw_uniform


def test_sampled_step_is_exact_where_draws_enumerate_the_grid(monkeypatch):
    """Fails if a view is encoded from another crop or image, or if lambda H(T|X) is missing
    or pushes the wrong way (checked by hand), for either estimator. In float64 the two sides
    differ by the order of their sums (crops here, one pass over the canvas there): at most n u
    times the terms' sizes, (B K)^2 = 729 x 1.1e-16 x beta = 4e-13; allowed 1e-12 + 1e-9 of
    each value (measured: 6e-16 on the MI, 1e-13 of the largest gradient)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 36, 36, generator=g, dtype=torch.float64)  # (3, 1, 36, 36): K = 9
    order = torch.rand(3, 9, generator=g).argsort(1)  # (3, 9) every crop once, in its own order
    monkeypatch.setattr(torch, "multinomial", lambda p, m, **_: order)
    close = dict(rtol=1e-9, atol=1e-12)
    exact = one_step(x, ["--samples", "0"])
    sampled = one_step(x, ["--samples", "9"])
    torch.testing.assert_close(sampled[:2], exact[:2], **close)  # (a) 1/m each: P(T|X) uniform
    lam = 0.5
    channel_grads = {}  # {(samples, lambda): the channel's gradients}
    for samples in ("0", "9"):
        for weight in (lam, 0.0):
            flags = ["--samples", samples, "--entropy-weight", str(weight)]
            _, grads, (_, channel) = one_step(x, flags, peaked=True)
            channel_grads[samples, weight] = grads["channel"]
    # (b) is exact for any P(T|X) ((a), weighting each view 1/m, is not)
    torch.testing.assert_close(channel_grads["9", lam], channel_grads["0", lam], **close)
    H = torch.distributions.Categorical(logits=channel.net(x).flatten(1)).entropy().mean()
    dH = torch.autograd.grad(H, list(channel.parameters()))  # independent of channel.entropy
    for samples in ("0", "9"):  # the channel's loss is -(MI + lambda H(T|X))
        with_lambda, without = channel_grads[samples, lam], channel_grads[samples, 0.0]
        difference = [a - b for a, b in zip(with_lambda, without)]
        torch.testing.assert_close(difference, [-lam * d for d in dH], **close)


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
    c, logw = draw_uniform(logp, 5, torch.Generator().manual_seed(0))  # (4, 5)
    w = np.take_along_axis(logp.exp().numpy(), c.numpy(), 1)  # (4, 5) P(t|x) of the drawn crops
    self_normalized = torch.from_numpy(np.log(w / w.sum(1, keepdims=True)))
    estimate = exact_mi(z[image, c], logw, 5.0).item()
    assert estimate == pytest.approx(mi_loop(z[image, c], self_normalized, 5.0), rel=1e-10)
    g = torch.Generator().manual_seed(0)
    errors = []
    for draw, ms in ((draw_from_channel, (1, 4, 16, 64)), (draw_uniform, (2, 8, 16))):
        for m in ms:
            estimates = []
            for _ in range(200):
                c, logw = draw(logp, m, g)  # (4, m) each
                estimates.append(exact_mi(z[image, c], logw, 5.0))
            errors.append(abs(torch.stack(estimates).mean() - exact_mi(z, logp, 5.0)).item())
    assert errors[0] > errors[1] > errors[2] > errors[3]  # (a) as m grows
    assert errors[4] > errors[5] > errors[6] and errors[6] < 1e-12  # (b), exact at m = K
