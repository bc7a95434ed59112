"""The poster's figures and the collapse diagnostics of a trained run; figures across runs.

similarity.png: cosine similarity of 200 codes sorted by class (collapsed for SimCLR, spread
out for ours); channel.png: the learned P(T|X) over the crop centres; scatter.png: the codes
of a 2-d head on the circle (uniformity); curves.png: the training curves.

    python figures.py sampled-vs-exact RUN_DIR ...   # the exact sum against the poster's m

Shapes: n images, C canvas side, K crops, d embedding.
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from channel import digit_coverage, entropy
from objective import alignment, exact_mi, uniformity


@torch.no_grad()
def codes(encoder, channel, x):
    """Canvases x (n, 1, C, C) uint8 -> (x in [0, 1], logp (n, K), z (n, K, d), the code: z
    averaged under P(T|X) and normalized (n, d))."""
    xb = x.float() / 255  # (n, 1, C, C)
    logp, z = channel(xb), encoder(xb)[1]  # (n, K), (n, K, d)
    return xb, logp, z, F.normalize((logp.exp()[:, :, None] * z).sum(1), dim=-1)


@torch.no_grad()
def diagnostics(args, encoder, channel, x, batch=64):
    """MI and H(T|X) of a batch, digit coverage, alignment, uniformity and the spread of codes."""
    xb, logp, z, code = codes(encoder, channel, x)
    g = torch.Generator(xb.device).manual_seed(args.seed)
    k = torch.multinomial(logp.exp(), 2, replacement=True, generator=g)  # (n, 2) crops from P
    z1, z2 = (z[torch.arange(len(z)), k[:, i]] for i in (0, 1))  # (n, d) each
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
    p, code = logp.exp(), code.cpu().numpy()  # (n, K), (n, d)
    H = torch.special.entr(p).sum(1).cpu().numpy()  # (n,) H(T|x) per canvas
    p, images, y = p.cpu().numpy(), xb[:, 0].cpu().numpy(), np.asarray(y)[:len(xb)]
    order = y[:200].argsort()
    fig, ax = plt.subplots(figsize=(5, 4.4))
    im = ax.imshow(code[order] @ code[order].T, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set(title=f"{args.method}: cosine similarity of 200 test codes\n(sorted by class)",
           xticks=[], yticks=[])
    fig.colorbar(im, ax=ax, shrink=0.8)
    save(fig, run_dir, "similarity.png")
    G, C = int(len(p[0]) ** 0.5), args.canvas
    fig, axes = plt.subplots(1, 6, figsize=(13, 2.6))
    for i, ax in enumerate(axes):  # crop centres run from 14 to C - 14 px
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
    keys = [k for k in history[0] if k != "step"]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3))
    for ax, key in zip(np.atleast_1d(axes), keys):
        ax.plot([h["step"] for h in history], [h[key] for h in history])
        ax.set(xlabel="step", title=key)
    fig.suptitle(f"{args.method}: probe (grid) f {accuracy['f']['accuracy']:.3f}, "
                 f"h {accuracy['h']['accuracy']:.3f}", y=1.05)
    save(fig, run_dir, "curves.png")
    plt.close("all")


def save(fig, run_dir, name):
    fig.savefig(os.path.join(run_dir, name), dpi=100, bbox_inches="tight")


def settings(run_dirs):
    """{(canvas, m, timed): [(args, metrics) of each seed]} of runs probed with --val; m = 0 is
    the exact sum, timed a run stopped by --minutes."""
    groups = {}
    for run_dir in run_dirs:
        with open(os.path.join(run_dir, "args.json")) as fh:
            args = json.load(fh)
        with open(os.path.join(run_dir, "metrics.json")) as fh:
            metrics = json.load(fh)
        if "probe_val" not in metrics:
            raise SystemExit(f"figures.py: error: {run_dir} has no validation probe: run "
                             f"python probe.py {run_dir} --val")
        key = (args["canvas"], args.get("samples", 0), args["minutes"] is not None)
        groups.setdefault(key, []).append((args, metrics))
    return dict(sorted(groups.items()))


def sampled_vs_exact(run_dirs, path):
    """Print the table of the exact sum against the poster's sampled Algorithm 1, and draw
    grid h and f on validation against training seconds: a dot per run, each setting's mean and
    standard deviation over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = settings(run_dirs)
    canvases = sorted({canvas for canvas, _, _ in groups})
    panels = [(canvases[0], "h"), (canvases[0], "f")] + [(c, "h") for c in canvases[1:]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    print("| canvas | setting | runs | grid f | grid h | exact MI | H(T|X) | digit coverage "
          "| training s | images/s |\n" + "|---" * 10 + "|")
    for (canvas, m, timed), runs in groups.items():
        label = ("exact sum" if m == 0 else f"m = {m}") + (", exact's time" if timed else "")
        seconds = np.array([metrics["train_seconds"] for _, metrics in runs])  # (seeds,)
        grid = {k: np.array([metrics["probe_val"]["grid"][k]["accuracy"] for _, metrics in runs])
                for k in "fh"}  # (seeds,) each
        diagnostics = {k: np.mean([metrics["probe_val"]["diagnostics"][k] for _, metrics in runs])
                       for k in ("mi", "entropy", "digit_coverage")}
        rate = np.mean([metrics["images_per_second"] for _, metrics in runs])
        print(f"| {canvas} | {label} | {len(runs)} | {mean_sd(grid['f'])} | {mean_sd(grid['h'])} "
              f"| {diagnostics['mi']:.2f} | {diagnostics['entropy']:.2f} "
              f"| {diagnostics['digit_coverage']:.3f} | {mean_sd(seconds, 0)} | {rate:.0f} |")
        for ax, (panel_canvas, k) in zip(axes, panels):
            if panel_canvas != canvas:
                continue
            color = "black" if m == 0 else plt.cm.viridis(np.log2(m) / 4.5)
            ax.scatter(seconds, grid[k], s=10, color=color, alpha=0.4)
            ax.errorbar(seconds.mean(), grid[k].mean(), xerr=seconds.std(ddof=1),
                        yerr=grid[k].std(ddof=1), color=color, label=label, capsize=3,
                        marker="*" if m == 0 else "o", mfc="none" if timed else color)
    for ax, (canvas, k) in zip(axes, panels):
        output = "encoder h" if k == "h" else "projection head f"
        ax.set(xscale="log", xlabel="training seconds (log scale)", title=f"canvas {canvas}",
               ylabel=f"validation accuracy, {output} (grid)")
        ax.legend(fontsize=7)
    fig.suptitle("The exact sum over the crop grid against the poster's m sampled crops")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def mean_sd(values, digits=4):
    return f"{np.mean(values):.{digits}f} +- {np.std(values, ddof=1):.{digits}f}"


def main(argv=None):
    p = argparse.ArgumentParser(description="Figures across runs of train.py.")
    p.add_argument("figure", choices=["sampled-vs-exact"], help="which figure to draw")
    p.add_argument("run_dirs", nargs="+", help="run folders of train.py, probed with --val")
    p.add_argument("--out", help="the PNG (default figures/FIGURE.png)")
    a = p.parse_args(argv)
    sampled_vs_exact(a.run_dirs, a.out or os.path.join("figures", f"{a.figure}.png"))


if __name__ == "__main__":
    main()
