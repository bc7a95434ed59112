"""The exact MI estimate of equation (2), its Jensen (SimCLR) lower bound, and NT-Xent.

Proposition 1 (Koyama et al. 2021): with P(Z | T(X)) = C_beta exp(beta S(Z, h(T(X)))),

    I(X;Z) = E_{X,Z} log E_{T'|X}[exp(beta S(Z, h(T'(X))))] / E_{T'',X~}[exp(beta S(Z, h(T''(X~))))]

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

# Entries of the (N, N) similarity matrix held at once: 4 MB chunks stay in a CPU's cache (2x
# faster than whole rows of a 4096^2 matrix); a GPU takes big ones.
CHUNK_ELEMENTS = {"cpu": 2**20, "cuda": 2**26}


class _WeightedLogSumExp(torch.autograd.Function):
    """U = sum_a w[a] lse[a], lse[a] = logsumexp_b (beta <zf[a], zf[b]> + logpf[b]) over the
    rows a = first .. first + len(w) - 1 of zf (N = B K rows, all of them by default) and all N b.

    Exact, a chunk of rows at a time, in one pass: U is a weighted sum, so its gradient
    dU/ds[a,b] = w[a] softmax_b(s[a, :]) is known while the chunk is at hand, and the backward
    only scales what the forward kept. The (N, N) matrix is never held whole (memory
    O(chunk * N)); each chunk costs one similarity matmul and one exp, where a forward and a
    recomputing backward would cost two of each.
    """

    @staticmethod
    def forward(ctx, zf, logpf, w, beta, grad, first=0):
        # grad: torch.is_grad_enabled() at the call (needs_input_grad ignores torch.no_grad())
        need_z = grad and ctx.needs_input_grad[0]
        need_logp = grad and ctx.needs_input_grad[1]
        chunk = max(1, CHUNK_ELEMENTS.get(zf.device.type, 2**20) // len(zf))  # rows per chunk
        lse = torch.empty_like(w)  # (n,)
        grad_logp = torch.zeros_like(logpf)  # (N,)
        grad_z = torch.zeros_like(zf)  # (N, d)
        for i in range(0, len(w), chunk):
            part = slice(i, i + chunk)  # the chunk's entries of w and lse
            rows = slice(first + i, first + min(i + chunk, len(w)))  # its rows of zf
            s = torch.addmm(logpf, zf[rows], zf.T, alpha=beta)  # (c, N) one chunk
            m = s.amax(1)  # (c,) the row's largest term: exp below cannot overflow
            e = s.sub_(m[:, None]).exp_()  # (c, N)
            r = e.sum(1)  # (c,)
            lse[part] = m + r.log()
            if need_z or need_logp:
                g = e.mul_((w[part] / r)[:, None])  # (c, N) dU/ds[a,b], in place of e
            if need_logp:
                grad_logp += g.sum(0)
            if need_z:
                grad_z[rows] += beta * (g @ zf)  # (c, d) through z[a] in <z[a], z[b]>
                grad_z += beta * (g.T @ zf[rows])  # (N, d) through z[b]
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(grad_z, grad_logp, lse)
        return (w * lse).sum(), lse

    @staticmethod
    def backward(ctx, grad_U, _):
        grad_z, grad_logp, lse = ctx.saved_tensors
        return grad_U * grad_z, grad_U * grad_logp, grad_U * lse, None, None, None


def den_reference(z, logp, beta):
    """den[i,k] = logsumexp_{j,l} (logp[j,l] + s[i,k,j,l]) - log B, as the formula reads: (B, K).

    Holds all (B K)^2 similarities at once: for the tests and small N. exact_mi uses _den.
    """
    s = beta * torch.einsum("ikd,jld->ikjl", z, z)  # (B, K, B, K)
    return torch.logsumexp((logp[None, None] + s).flatten(2), dim=2) - math.log(len(z))  # (B, K)


def _den(z, logp, beta, rows=slice(None)):
    """(sum_{i in rows, k} p[i,k] den[i,k], den (b, K)) of the b images rows: den_reference's
    values, never holding (N, N)."""
    B, K, d = z.shape
    p = logp.exp()  # (B, K)
    zf = z.reshape(B * K, d)  # (N, d)
    logpf = logp.reshape(B * K)  # (N,)
    pf = p[rows].reshape(-1)  # (n,) the weights of the rows' terms
    first = rows.indices(B)[0] * K  # the rows' first in zf
    U, lse = _WeightedLogSumExp.apply(zf, logpf, pf, beta, torch.is_grad_enabled(), first)
    return U - p[rows].sum() * math.log(B), lse.view(-1, K) - math.log(B)


def _self_similarity(z, beta):
    return beta * torch.einsum("ikd,ild->ikl", z, z)  # (B, K, K) s[i,k,i,l]


def exact_mi(z, logp, beta, rows=slice(None)):
    """MI of equation (2), exact over the crop grid, in nats (to maximize).

    z (B, K, d) unit vectors h(t_k(x_i)) under the projection head; logp (B, K) log P(t_k | x_i).
    rows: the images i whose terms are summed, all by default; in a distributed run, each
    process sums its own images' terms, and the processes' sums add up to the MI.
    """
    p = logp.exp()  # (B, K)
    # num of every image (B K^2 terms, few beside the (B K)^2 of den), then the rows' alone
    num = torch.logsumexp(logp[:, None, :] + _self_similarity(z, beta), dim=2)  # (B, K)
    return ((p * num)[rows].sum() - _den(z, logp, beta, rows)[0]) / len(z)


def simclr_bound(z, logp, beta):
    """The Jensen lower bound of exact_mi: num[i,k] replaced by sum_l p[i,l] s[i,k,i,l]."""
    p = logp.exp()  # (B, K)
    jensen = torch.einsum("il,ikl->ik", p, _self_similarity(z, beta))  # (B, K)
    return ((p * jensen).sum() - _den(z, logp, beta)[0]) / len(z)


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
