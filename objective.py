"""Equation (2) exact over the crop grid, its Jensen (SimCLR) lower bound, and NT-Xent.

Proposition 1 (Koyama et al. 2021; derived in METHOD.md): with P(Z | T(X)) = C exp(beta S(Z,
h(T(X)))), S the cosine similarity and Z replaced by its mean direction z = h(T(X)),

    I(X;Z) = E_{X,Z} log E_{T'|X}[exp(beta S(Z, h(T'(X))))] / E_{T'',X~}[exp(beta S(Z, h(T''(X~))))]

On a crop grid every expectation over T is a sum over the K crops, and X~ runs over the batch:
    s[i,k,j,l] = beta <z[i,k], z[j,l]>
    num[i,k]   = logsumexp_l (logp[i,l] + s[i,k,i,l])                 alignment, -H(Z|X)
    den[i,k]   = logsumexp_{j,l} (logp[j,l] + s[i,k,j,l]) - log B     uniformity, -H(Z)
    MI         = 1/B sum_i sum_k p[i,k] (num[i,k] - den[i,k])
exact_mi computes den as it reads, all (B K)^2 similarities at once, for a small batch; past
DENSE_ROWS rows it streams them (_WeightedLogSumExp): the same value and gradient, tested equal.
Shapes: B batch, b images of rows, K crops, d embedding, N = B * K rows of the similarity matrix.
"""
import math

import torch
import torch.nn.functional as F

# N = B K up to which den is computed dense: past it the streamed form is faster on a CPU (time
# of a forward and backward, dense over streamed: 0.85 at N = 144, 1.2 at 256, 2.5 at 2,048)
DENSE_ROWS = 192
# Entries of the (N, N) similarity matrix the streamed form holds at once: 4 MB chunks stay in a
# CPU's cache (2x faster than whole rows of a 4096^2 matrix); a GPU takes big ones.
CHUNK_ELEMENTS = {"cpu": 2**20, "cuda": 2**26}


def exact_mi(z, logp, beta, rows=slice(None)):
    """MI of equation (2), exact over the crop grid, in nats (to maximize).

    z (B, K, d) unit vectors h(t_k(x_i)) under the projection head; logp (B, K) log P(t_k | x_i).
    rows: the images i whose terms are summed, all by default; in a distributed run, each
    process sums its own images' terms, and the processes' sums add up to the MI.
    """
    p = logp.exp()  # (B, K)
    own = beta * torch.einsum("ikd,ild->ikl", z, z)  # (B, K, K) s[i,k,i,l]
    num = torch.logsumexp(logp[:, None, :] + own, dim=2)  # (B, K)
    return ((p * num)[rows].sum() - den_sum(z, logp, beta, rows)) / len(z)


def den_sum(z, logp, beta, rows=slice(None)):
    """sum_{i in rows, k} p[i,k] den[i,k]: (2)'s denominator, weighted as the MI weighs it."""
    B, K, _ = z.shape
    if B * K > DENSE_ROWS:  # the same, streamed: never (B K)^2 similarities at once
        return _streamed_den_sum(z, logp, beta, rows)
    s = beta * torch.einsum("ikd,jld->ikjl", z[rows], z)  # (b, K, B, K) s[i,k,j,l]
    den = torch.logsumexp((logp + s).flatten(2), dim=2) - math.log(B)  # (b, K)
    return (logp[rows].exp() * den).sum()


def simclr_bound(z, logp, beta, rows=slice(None)):
    """Jensen's lower bound of exact_mi (log is concave): num[i,k] replaced by
    sum_l p[i,l] s[i,k,i,l] <= num[i,k]. With K = 2 crops, uniform, it is NT-Xent but for two
    terms (METHOD.md, tested)."""
    p = logp.exp()  # (B, K)
    own = beta * torch.einsum("ikd,ild->ikl", z, z)  # (B, K, K) s[i,k,i,l]
    jensen = torch.einsum("il,ikl->ik", p, own)  # (B, K)
    return ((p * jensen)[rows].sum() - den_sum(z, logp, beta, rows)) / len(z)


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


def worked_example():
    """(2) by hand: B = 2 images, K = 4 crops, beta = log 4, so e^s is 4 between equal codes and
    1 between orthogonal ones. Crops 1, 2 hold the digit, coded e1 in image 1 and e2 in image 2;
    crops 3, 4 are blank, coded e3 in both. For each P(T|x) of crops 1 to 4, the same in both
    images: (e^num and e^den of a digit crop, the same of a blank crop, the MI)."""
    e = torch.eye(3, dtype=torch.float64)  # (3, 3)
    z = torch.stack([e[[0, 0, 2, 2]], e[[1, 1, 2, 2]]])  # (2, 4, 3)
    beta = math.log(4)
    s = beta * torch.einsum("ikd,jld->ikjl", z, z)  # (2, 4, 2, 4)
    table = {}
    for p in ((0.25, 0.25, 0.25, 0.25), (0.4, 0.4, 0.1, 0.1), (0.5, 0.5, 0.0, 0.0)):
        logp = torch.tensor([p, p], dtype=torch.float64).log()  # (2, 4)
        num = torch.logsumexp(logp[0] + s[0, :, 0], dim=1)  # (4,) image 1's crops
        den = torch.logsumexp((logp + s[0]).flatten(1), dim=1) - math.log(2)  # (4,)
        sums = (num.exp()[0], den.exp()[0], num.exp()[2], den.exp()[2])
        table[p] = (*[v.item() for v in sums], exact_mi(z, logp, beta).item())
    return table


def main():
    """python objective.py: the worked example's numbers."""
    print("(2) by hand: B = 2 images, K = 4 crops, beta = log 4 (e^s is 4 for equal codes, 1 for")
    print("orthogonal ones); crops 1, 2 hold the digit (e1 in image 1, e2 in image 2), crops 3, 4")
    print("are blank (e3 in both). num = log E_T'[e^s], den = log E_T'',X~[e^s]:\n")
    print("P(T|x) of crops 1 to 4     digit: e^num  e^den   blank: e^num  e^den    MI, nats")
    for p, (num, den, blank_num, blank_den, mi) in worked_example().items():
        print(f"{str(p):26} {num:11.2f} {den:6.2f} {blank_num:14.2f} {blank_den:6.2f} {mi:11.4f}")


# The streamed form of den_sum: an optimization, the dense lines above are the definition.

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
        ctx.save_for_backward(grad_z, grad_logp, lse)
        return (w * lse).sum()

    @staticmethod
    def backward(ctx, grad_U):
        grad_z, grad_logp, lse = ctx.saved_tensors
        return grad_U * grad_z, grad_U * grad_logp, grad_U * lse, None, None, None


def _streamed_den_sum(z, logp, beta, rows):
    """den_sum's value and gradient, a chunk of rows of the (N, N) similarities at a time."""
    B, K, d = z.shape
    zf = z.reshape(B * K, d)  # (N, d)
    logpf = logp.reshape(B * K)  # (N,)
    pf = logp[rows].exp().reshape(-1)  # (n,) the weights of the rows' terms
    first = rows.indices(B)[0] * K  # the rows' first in zf
    U = _WeightedLogSumExp.apply(zf, logpf, pf, beta, torch.is_grad_enabled(), first)
    return U - pf.sum() * math.log(B)


if __name__ == "__main__":
    main()
