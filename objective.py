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


class _StreamedLogSumExp(torch.autograd.Function):
    """lse[a] = logsumexp_b (beta <zf[a], zf[b]> + logpf[b]) over N = B * K rows, a chunk at a time.

    Exact, with a hand-written backward that recomputes each chunk: the (N, N) matrix is
    never held whole (memory O(chunk * N)) and each chunk is one fused matmul and a few
    in-place passes, about twice as fast on a CPU as autograd through the whole matrix.
    """

    @staticmethod
    def forward(ctx, zf, logpf, beta):
        ctx.chunk = max(1, CHUNK_ELEMENTS.get(zf.device.type, 2**20) // len(zf))  # rows per chunk
        lse = torch.empty_like(logpf)  # (N,)
        for i in range(0, len(zf), ctx.chunk):
            s = torch.addmm(logpf, zf[i:i + ctx.chunk], zf.T, alpha=beta)  # (c, N) one chunk
            lse[i:i + ctx.chunk] = torch.logsumexp(s, 1)
        ctx.save_for_backward(zf, logpf, lse)
        ctx.beta = beta
        return lse

    @staticmethod
    def backward(ctx, grad_lse):
        zf, logpf, lse = ctx.saved_tensors
        need_z = ctx.needs_input_grad[0]  # False in the channel step: z is fixed there
        grad_z, grad_logp = torch.zeros_like(zf) if need_z else None, torch.zeros_like(logpf)
        for i in range(0, len(zf), ctx.chunk):
            rows = slice(i, i + ctx.chunk)
            w = torch.addmm(logpf, zf[rows], zf.T, alpha=ctx.beta)  # (c, N) the chunk again
            w.sub_(lse[rows, None]).exp_().mul_(grad_lse[rows, None])  # (c, N) softmax x grad
            grad_logp += w.sum(0)
            if need_z:
                grad_z[rows] += ctx.beta * (w @ zf)  # (c, d) through z[a] in <z[a], z[b]>
                grad_z += ctx.beta * (w.T @ zf[rows])  # (N, d) through z[b]
        return grad_z, grad_logp, None


def den_reference(z, logp, beta):
    """den[i,k] = logsumexp_{j,l} (logp[j,l] + s[i,k,j,l]) - log B, as the formula reads: (B, K).

    Holds all (B K)^2 similarities at once: for the tests and small N. exact_mi uses _den.
    """
    s = beta * torch.einsum("ikd,jld->ikjl", z, z)  # (B, K, B, K)
    return torch.logsumexp((logp[None, None] + s).flatten(2), dim=2) - math.log(len(z))  # (B, K)


def _den(z, logp, beta):
    """den_reference streamed: the same (B, K) values, never holding the (N, N) matrix."""
    B, K, d = z.shape
    lse = _StreamedLogSumExp.apply(z.reshape(B * K, d), logp.reshape(B * K), beta)  # (N,)
    return lse.view(B, K) - math.log(B)


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
