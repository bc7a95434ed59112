"""The poster's sampled Algorithm 1: m crops drawn per image, where the exact sum takes all K.

The poster estimates (2) from draws: T ~ P(T|X) in the encoder's phase, T uniform and weighted
by P(T|X) in the channel's. With m draws per image (image i = 1..B, draw a = 1..m, c[i,a] the
index of the crop drawn), both phases are (2) on the B m views u[i,a] = h(t_{c[i,a]}(x_i)) with
weights w[i,a] in place of P(t_k|x_i), so objective.exact_mi(u, log w) computes them. The views
are encoded as m crops of 28x28, not as one pass over the canvas: a step costs (B m)^2
similarities and 2 B m crops, against (B K)^2 and two passes over each canvas for the exact sum.
Shapes: B batch, K crops, m draws per image, d embedding.
"""
import math

import torch

from channel import crops_at


def draw_from_channel(logp, m, g):
    """The encoder phase: c[i,a] ~ P(T|x_i) for a = 1..m, with replacement (i.i.d. Monte Carlo
    draws), each view weighted 1/m: (c (B, m), logw (B, m)). exact_mi(u, logw) is then
        num[i,a] = log 1/m sum_b exp(s[i,a,i,b])
        den[i,a] = log 1/(B m) sum_{j,b} exp(s[i,a,j,b])
        MI_enc   = 1/(B m) sum_{i,a} (num[i,a] - den[i,a])
    """
    c = torch.multinomial(logp.exp(), m, replacement=True, generator=g)  # (B, m)
    return c, logp.new_full(c.shape, -math.log(m))  # (B, m)


def draw_uniform(logp, m, g):
    """The channel phase: c[i,a] uniform over the K crops without replacement (m <= K), weighted
    by P(T|x_i) renormalized over them, differentiable in logp: (c (B, m), logw (B, m)).

        log w[i,a] = logp[i,c[i,a]] - logsumexp_b logp[i,c[i,b]]    (self-normalized weights)

    exact_mi(u, logw) is then (2) on the drawn crops: consistent, and exact at m = K, where the
    draws enumerate the grid; for m < K its value and its gradient in eta are biased (a ratio
    of estimates, inside logs). The gradient reaches eta through w, as in the exact sum, with no
    score function. The unnormalized weights K p / m would be unbiased inside each expectation
    of (2), not after its logs, and vary more.
    """
    c = torch.multinomial(torch.ones_like(logp), m, replacement=False, generator=g)  # (B, m)
    return c, logp.gather(1, c).log_softmax(1)  # (B, m)


def views(encoder, x, grid, c, rows=slice(None)):
    """z of the crops c[rows] (b, m) of the canvases x (b, 1, C, C), encoded as crops: (b, m, d);
    or, where c is None, of all K grid crops, in one pass over each canvas: (b, K, d). rows: the
    canvases' images in the batch that c draws for (all, but in a distributed run)."""
    if c is None:
        return encoder(x)[1]  # (b, K, d)
    crops = crops_at(x, grid[c[rows]]).flatten(0, 1)[:, None]  # (b m, 1, 28, 28)
    return encoder(crops)[1].view(len(x), c.shape[1], -1)  # (b, m, d)
