"""The poster's figures and the collapse diagnostics of a trained run.

similarity.png: cosine similarity of 200 codes sorted by class (collapsed for SimCLR, spread
out for ours); channel.png: the learned P(T|X) over the crop centres; scatter.png: the codes
of a 2-d head on the circle (uniformity); curves.png: the training curves.
Shapes: n images, C canvas side, K crops, d embedding.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

from channel import digit_coverage, entropy, grid_offsets
from objective import alignment, exact_mi, uniformity


@torch.no_grad()
def codes(encoder, channel, x):
    """Canvases x (n, 1, C, C) uint8 -> (x in [0, 1], logp (n, K), z (n, K, d), the code: z
    averaged under P(T|X) and normalized (n, d))."""
    xb = x.to(next(encoder.parameters()).dtype) / 255  # (n, 1, C, C) in the weights' dtype
    logp = channel(xb)  # (n, K)
    z = encoder(xb)[1]  # (n, K, d)
    code = F.normalize((logp.exp()[:, :, None] * z).sum(1), dim=-1)  # (n, d)
    return xb, logp, z, code


@torch.no_grad()
def diagnostics(args, encoder, channel, x, batch=64):
    """MI and H(T|X) of a batch, digit coverage, alignment, uniformity and the spread of codes."""
    xb, logp, z, code = codes(encoder, channel, x)
    g = torch.Generator(xb.device).manual_seed(args.seed)
    k = torch.multinomial(logp.exp(), 2, replacement=True, generator=g)  # (n, 2) crops from P
    image = torch.arange(len(z))  # (n,)
    z1 = z[image, k[:, 0]]  # (n, d) the first crop's code
    z2 = z[image, k[:, 1]]  # (n, d) the second's
    return {"mi": exact_mi(z[:batch], logp[:batch], args.beta).item(),
            "entropy": entropy(logp).item(),
            "digit_coverage": digit_coverage(logp, xb).item(),  # E_P of the digit's share in t
            "alignment": alignment(z1, z2).item(), "uniformity": uniformity(z1).item(),
            "feature_std": code.std(0).mean().item(), "feature_std_uniform": code.shape[1] ** -0.5}


@torch.no_grad()
def draw(run_dir, args, encoder, channel, x, y, history, accuracy):
    """Write the figures of canvases x (n, 1, C, C) uint8 with labels y into run_dir."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xb, logp, _, code = codes(encoder, channel, x)
    p = logp.exp()  # (n, K)
    H = torch.special.entr(p).sum(1).cpu().numpy()  # (n,) H(T|x) per canvas
    p = p.cpu().numpy()
    code = code.cpu().numpy()  # (n, d)
    images = xb[:, 0].cpu().numpy()  # (n, C, C)
    y = np.asarray(y)[:len(xb)]  # (n,)
    order = y[:200].argsort()
    fig, ax = plt.subplots(figsize=(5, 4.4))
    im = ax.imshow(code[order] @ code[order].T, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set(title=f"{args.method}: cosine similarity of 200 test codes\n(sorted by class)",
           xticks=[], yticks=[])
    fig.colorbar(im, ax=ax, shrink=0.8)
    save(fig, run_dir, "similarity.png")
    G = int(len(p[0]) ** 0.5)  # crops per side
    C = args.canvas
    fig, axes = plt.subplots(1, 6, figsize=(13, 2.6))
    for i, ax in enumerate(axes):  # G x G cells 4 px wide, centred on crop centres 14 .. C - 14
        ax.imshow(images[i], cmap="gray", extent=(0, C, C, 0))
        ax.imshow(p[i].reshape(G, G), cmap="magma", alpha=0.55, extent=(12, C - 12, C - 12, 12))
        ax.set(title=f"digit {y[i]}, H={H[i]:.1f} nats", xticks=[], yticks=[], xlim=(0, C),
               ylim=(C, 0))
    fig.suptitle(f"{args.method}: P(T|X) over crop centres")
    save(fig, run_dir, "channel.png")
    if code.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(code[:, 0], code[:, 1], c=y, cmap="tab10", s=4)
        ax.set(title=f"{args.method}: 2-d codes of {len(code)} test images", aspect="equal",
               xlim=(-1.1, 1.1), ylim=(-1.1, 1.1))
        save(fig, run_dir, "scatter.png")
    if args.method == "ours":
        draw_method(run_dir, args, encoder, channel, xb[0], p[0])
    if history:  # a run of --steps 0 has no curves
        keys = [k for k in history[0] if k != "step"]
        fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3))
        for ax, key in zip(np.atleast_1d(axes), keys):
            ax.plot([h["step"] for h in history], [h[key] for h in history])
            ax.set(xlabel="step", title=key)
        fig.suptitle(f"{args.method}: probe (grid) f {accuracy['f']['accuracy']:.3f}, "
                     f"h {accuracy['h']['accuracy']:.3f}", y=1.05)
        save(fig, run_dir, "curves.png")
    plt.close("all")


def draw_method(run_dir, args, encoder, channel, x, p):
    """method.png: X -> T -> Z on one canvas x (1, C, C) in [0, 1] with its P(T|x) p (K,): the
    crop grid, P(T|x) over the crop centres, three crops with their weights, and their codes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    C, G = args.canvas, int(len(p) ** 0.5)
    offsets = grid_offsets(C).numpy()  # (K, 2)
    image = x[0].cpu().numpy()  # (C, C)
    chosen = [p.argmax(), np.argsort(p)[len(p) // 2], p.argmin()]  # most, middle, least probable
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.2), width_ratios=[1, 1, 0.5, 0.5, 0.5])
    axes[0].imshow(image, cmap="gray", extent=(0, C, C, 0))
    axes[0].scatter(offsets[:, 1] + 14, offsets[:, 0] + 14, s=4, c="c")  # the crop centres
    for k, colour in zip(chosen, ("tab:orange", "tab:green", "tab:red")):
        r, c = offsets[k]
        axes[0].add_patch(Rectangle((c, r), 28, 28, fill=False, ec=colour, lw=2))
    axes[0].set(title=f"x and its K = {len(p)} crops t_k (28x28)", xticks=[], yticks=[])
    axes[1].imshow(image, cmap="gray", extent=(0, C, C, 0))
    axes[1].imshow(p.reshape(G, G), cmap="magma", alpha=0.6, extent=(12, C - 12, C - 12, 12))
    axes[1].set(title="P(T|x) over the crop centres", xticks=[], yticks=[], xlim=(0, C),
                ylim=(C, 0))
    for ax, k, colour in zip(axes[2:], chosen, ("tab:orange", "tab:green", "tab:red")):
        r, c = offsets[k]
        ax.imshow(image[r:r + 28, c:c + 28], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"P(t_{k}|x) = {p[k]:.3f}", color=colour)
        ax.set(xticks=[], yticks=[], xlabel="h: 256 features\nz = f(h) / |f(h)| in R^50")
    fig.suptitle("X -> T -> Z: crops t ~ P(T|x), the encoder h and head f give the unit code z, "
                 "Z ~ exp(beta S(Z, z)) around it; (2) sums over all K crops (or --samples m)",
                 y=1.04)
    save(fig, run_dir, "method.png")


def save(fig, run_dir, name):
    fig.savefig(os.path.join(run_dir, name), dpi=100, bbox_inches="tight")
