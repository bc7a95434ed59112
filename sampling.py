"""The poster's sampled Algorithm 1: m crops drawn per image, where the exact sum takes all K.

The poster estimates (2) from draws: T ~ P(T|X) in the encoder's phase, T uniform and weighted
by P(T|X) in the channel's. With m draws per image (image i = 1..B, draw a = 1..m, c[i,a] the
index of the crop drawn), both phases estimate (2) on the views u[i,a] = h(t_{c[i,a]}(x_i)). The
views are encoded as m crops of 28x28, not as one pass over the canvas: a step costs (B m)^2
similarities and 2 B m crops, against (B K)^2 and two passes over each canvas for the exact sum.
Shapes: B batch, b images of rows, K crops, m draws per image, d embedding.
"""
import math

import torch

from channel import crops_at


def draw_from_channel(logp, m, g):
    """The encoder phase's draws: c[i,a] ~ P(T|x_i) for a = 1..m, with replacement (i.i.d. Monte
    Carlo draws): c (B, m)."""
    return torch.multinomial(logp.exp(), m, replacement=True, generator=g)  # (B, m)


def mi_of_draws(u, beta, rows=slice(None)):
    """The encoder phase's (2) on the views u (B, m, d) of m draws per image from P(T|X):

        num[i,a] = log 1/(m - 1) sum_{b != a} exp(s[i,a,i,b])
        den[i,a] = log 1/B (exp(num[i,a]) + sum_{j != i} 1/m sum_b exp(s[i,a,j,b]))
        MI_enc   = 1/(B m) sum_{i in rows, a} (num[i,a] - den[i,a])

    T' (num) and T'' (den, where X~ is x_i itself) are drawn independently of the T that made
    u[i,a], so the other m - 1 draws of its image estimate both; u[i,a]'s pair with itself
    (e^beta, at weight 1/m, not P(T|x)'s) would not. m = 1 leaves no other draw: refused."""
    B, m, _ = u.shape
    s = beta * torch.einsum("iad,jbd->iajb", u[rows], u)  # (b, m, B, m) s[i,a,j,b] of the rows
    i = torch.arange(B, device=u.device)[rows]  # (b,) the rows' images
    own = s[torch.arange(len(i)), :, i]  # (b, m, m) s[i,a,i,b]
    self_pair = torch.eye(m, dtype=torch.bool, device=u.device)  # (m, m)
    num = torch.logsumexp(own.masked_fill(self_pair, float("-inf")), 2) - math.log(m - 1)  # (b, m)
    own_image = i[:, None, None, None] == torch.arange(B, device=u.device)[:, None]  # (b, 1, B, 1)
    others = s.masked_fill(own_image, float("-inf")).flatten(2)  # (b, m, B m) j != i
    den = torch.logaddexp(num, torch.logsumexp(others, 2) - math.log(m)) - math.log(B)  # (b, m)
    return (num - den).sum() / (B * m)


def draw_uniform(logp, m, g, weights="self-normalized"):
    """The channel phase's draws: c[i,a] uniform over the K crops without replacement (m <= K),
    with log weights differentiable in logp: (c (B, m), logw (B, m)).

        self-normalized  log w[i,a] = logp[i,c[i,a]] - logsumexp_b logp[i,c[i,b]]
        unnormalized     log w[i,a] = logp[i,c[i,a]] + log(K / m)

    objective.exact_mi(u, logw) is then (2) on the drawn crops. Self-normalized: consistent,
    exact at m = K where the draws enumerate the grid, biased for m < K (a ratio of estimates).
    Unnormalized (importance weights of uniform draws): unbiased for the outer E_{T|X} and for
    the sums over other images' crops, but a draw's sums over its own image count its pair with
    itself at weight K p / m and each other crop with chance (m - 1) / (K - 1); of larger
    variance; exact at m = K too. Either way the logs bias (2) for m < K, and the gradient
    reaches eta through w, as in the exact sum, with no score function.
    """
    c = torch.multinomial(torch.ones_like(logp), m, replacement=False, generator=g)  # (B, m)
    logp_drawn = logp.gather(1, c)  # (B, m)
    if weights == "unnormalized":
        return c, logp_drawn + math.log(logp.shape[1] / m)  # (B, m)
    return c, logp_drawn.log_softmax(1)  # (B, m)


def views(encoder, x, grid, c, rows=slice(None)):
    """z of the crops c[rows] (b, m) of the canvases x (b, 1, C, C), encoded as crops: (b, m, d);
    or, where c is None, of all K grid crops, in one pass over each canvas: (b, K, d). rows: the
    canvases' images in the batch that c draws for (all, but in a distributed run)."""
    if c is None:
        return encoder(x)[1]  # (b, K, d)
    crops = crops_at(x, grid[c[rows]]).flatten(0, 1)[:, None]  # (b m, 1, 28, 28)
    return encoder(crops)[1].view(len(x), c.shape[1], -1)  # (b, m, d)
