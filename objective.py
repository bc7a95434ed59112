"""The exact MI estimate of equation (2), its Jensen (SimCLR) lower bound, and NT-Xent.

Proposition 1 (Koyama et al. 2021): with P(Z | T(X)) = C_beta exp(beta S(Z, h(T(X)))),

    I(X;Z) = E_{X,Z} log E_{T'|X}[exp(beta S(Z, h(T'(X))))] / E_{T'',X~}[exp(beta S(Z, h(T''(X~))))].

On a crop grid every expectation over T is a sum over K crops (PAPER.md, "The estimator"):
    s[i,k,j,l] = beta <z[i,k], z[j,l]>
    num[i,k]   = logsumexp_l (logp[i,l] + s[i,k,i,l])                 alignment, H(Z|X)
    den[i,k]   = logsumexp_{j,l} (logp[j,l] + s[i,k,j,l]) - log B     uniformity, H(Z)
    MI         = 1/B sum_i sum_k p[i,k] (num[i,k] - den[i,k])
Shapes: B batch, K crops, d embedding, N = B * K rows of the similarity matrix.
"""
import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK = 4096  # rows of the (N, N) similarity matrix held at once when N is larger


def _logsumexp_rows(rows, zf, logpf, beta):
    return torch.logsumexp(beta * rows @ zf.T + logpf, dim=1)  # (rows,)


def _den(z, logp, beta):
    """den[i,k] of every anchor: (B, K). Streams the (N, N) matrix in row chunks when N > CHUNK,
    recomputing each chunk in the backward pass (exact, and memory O(CHUNK * N))."""
    B, K, d = z.shape
    zf, logpf = z.reshape(B * K, d), logp.reshape(B * K)  # (N, d), (N,)
    if B * K <= CHUNK:
        lse = _logsumexp_rows(zf, zf, logpf, beta)  # (N,)
    else:
        lse = torch.cat([checkpoint(_logsumexp_rows, zf[i:i + CHUNK], zf, logpf, beta, use_reentrant=False)
                         for i in range(0, B * K, CHUNK)])  # (N,)
    return lse.view(B, K) - math.log(B)  # (B, K)


def _self_similarity(z, beta):
    return beta * torch.einsum("ikd,ild->ikl", z, z)  # (B, K, K) s[i,k,i,l]


def exact_mi(z, logp, beta):
    """MI of equation (2), exact over the crop grid, in nats (to maximize).

    z (B, K, d) unit vectors h(t_k(x_i)) under the projection head; logp (B, K) log P(t_k | x_i).
    """
    num = torch.logsumexp(logp[:, None, :] + _self_similarity(z, beta), dim=2)  # (B, K)
    return (logp.exp() * (num - _den(z, logp, beta))).sum(1).mean()


def simclr_bound(z, logp, beta):
    """The Jensen lower bound of exact_mi: num[i,k] replaced by sum_l p[i,l] s[i,k,i,l]."""
    p = logp.exp()  # (B, K)
    jensen = torch.einsum("il,ikl->ik", p, _self_similarity(z, beta))  # (B, K)
    return (p * (jensen - _den(z, logp, beta))).sum(1).mean()


def nt_xent(z1, z2, beta):
    """SimCLR's two-view NT-Xent loss (Chen et al. 2020), temperature 1/beta (to minimize).

    z1, z2 (B, d) unit vectors of two views; each of the 2B anchors must find its other view
    among the 2B - 1 others (self-similarity excluded); mean over anchors.
    """
    B = len(z1)
    z = torch.cat([z1, z2])  # (2B, d)
    s = (beta * z @ z.T).fill_diagonal_(float("-inf"))  # (2B, 2B)
    positive = (torch.arange(2 * B, device=z.device) + B) % (2 * B)  # (2B,)
    return F.cross_entropy(s, positive)


def alignment(z1, z2, alpha=2):
    """Wang & Isola 2020: E ||z1 - z2||^alpha over positive pairs (lower is better aligned)."""
    return (z1 - z2).norm(dim=1).pow(alpha).mean()


def uniformity(z, t=2):
    """Wang & Isola 2020: log E_{i != j} exp(-t ||z_i - z_j||^2) (lower is more uniform)."""
    n = len(z)
    sq = (z * z).sum(1)  # (n,)
    dist2 = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min(0)  # (n, n), no torch.pdist
    logits = (-t * dist2).fill_diagonal_(float("-inf"))  # (n, n) pairs i != j
    return torch.logsumexp(logits.flatten(), 0) - math.log(n * (n - 1))
