"""The poster's linear classification protocol on frozen features.

    python probe.py RUN_DIR

Features of the encoder h (256-d) and of the projection head f (d-dim), in three modes:
  grid    averaged over the crop grid under the run's channel P(T|X) (uniform for simclr)
  topn    averaged over the n most probable crops under P(T|X) (ours)
  oracle  the crop at the true digit offset (the poster's "SimCLR (oracle)")
A scikit-learn logistic regression on the raw features (not standardized: rescaling each
feature would hide the collapse the poster measures, the representations of all images
crowding together) is fitted on the whole train split (60,000 MNIST images), its inverse
regularization C chosen on the last fifth of it (never on test), and scored on the test split.
"""
import argparse
import io
import json
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from channel import CROP, STRIDE, Channel, crops_at
from data import load_canvases, write_atomic
from model import Encoder

CS = (1.0, 10.0, 100.0)  # candidate C of the logistic regression
SELECT = 10000  # train images of the fits that choose C (the chosen C is then refitted on all of them)
MAX_ITER = 500  # L-BFGS iterations per fit: part of the protocol, so a collapsed run may stop unconverged


def save_json(path, obj):
    write_atomic(path, lambda fh: fh.write(json.dumps(obj, indent=2).encode()))


def load_run(run_dir, device="cpu"):
    """(args, encoder, channel, loss history) of a run folder written by train.py, weights frozen."""
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location=device, weights_only=True)
    args = argparse.Namespace(**ckpt["args"])  # the arguments the weights were trained with
    encoder, channel = Encoder(args.dim).to(device), Channel().to(device)
    try:
        encoder.load_state_dict(ckpt["encoder"])
        channel.load_state_dict(ckpt["channel"])
    except RuntimeError as e:  # e.g. a run of the earlier 128-feature encoder
        sys.exit(f"probe.py: error: {run_dir}: the weights do not fit this model.py: {str(e).splitlines()[-1].strip()}")
    return args, encoder.eval().requires_grad_(False), channel.eval().requires_grad_(False), ckpt["history"]


@torch.no_grad()
def features(encoder, channel, x, offsets, modes, topn, batch=256):
    """{mode: {"h": (N, 256), "f": (N, d)}} numpy features of uint8 canvases x (N, 1, C, C)."""
    device = next(encoder.parameters()).device
    out = {m: {"h": [], "f": []} for m in modes}
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].to(device).float() / 255  # (B, 1, C, C)
        h, z = encoder(xb)  # (B, K, 256), (B, K, d)
        p = channel(xb).exp()  # (B, K)
        weights = {"grid": p}
        if "topn" in modes:
            n = min(topn, p.shape[1])  # a small canvas may have fewer than n crops
            weights["topn"] = torch.zeros_like(p).scatter_(1, p.topk(n, dim=1).indices, 1 / n)  # (B, K)
        for mode in modes:
            if mode == "oracle":
                h_o, z_o = encoder(crops_at(xb, offsets[i:i + batch]))  # (B, 1, 256), (B, 1, d)
                pairs = (("h", h_o[:, 0]), ("f", z_o[:, 0]))
            else:
                w = weights[mode][:, :, None]  # (B, K, 1)
                pairs = (("h", (w * h).sum(1)), ("f", (w * z).sum(1)))
            for name, value in pairs:
                out[mode][name].append(value.cpu().numpy())
    return {m: {k: np.concatenate(v) for k, v in out[m].items()} for m in modes}


def linear_probe(train_x, train_y, test_x, test_y, seed=0):
    """Test accuracy of a logistic regression refitted on all train, its C chosen by fits on at most
    SELECT images of the first four fifths of train, scored on the last fifth."""
    def fit(x, y, C):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed).fit(x, y)
    cut = len(train_x) * 4 // 5
    if min(len(np.unique(train_y[:cut])), len(np.unique(train_y[cut:]))) < 2:
        sys.exit(f"probe.py: error: {len(train_x)} train images are too few: a part of them holds one class")
    part = slice(0, min(cut, SELECT))
    best = max(CS, key=lambda C: fit(train_x[part], train_y[part], C).score(train_x[cut:], train_y[cut:]))
    return float(fit(train_x, train_y, best).score(test_x, test_y))


@torch.no_grad()
def figures_and_diagnostics(run_dir, args, encoder, channel, x, y, history, accuracy):
    """The poster's figures as PNG files in run_dir, and collapse diagnostics, from test canvases x (N, 1, C, C)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    device = next(encoder.parameters()).device
    xb = x[:1000].to(device).float() / 255  # (n, 1, C, C)
    p, z = channel(xb).exp(), encoder(xb)[1]  # (n, K), (n, K, d)
    code = F.normalize((p[:, :, None] * z).sum(1), dim=-1).cpu()  # (n, d) z averaged under P(T|X)
    ink = F.avg_pool2d(xb, CROP, STRIDE).flatten(1) * CROP**2 / xb.sum((1, 2, 3))[:, None]  # (n, K) digit inside crop k
    diagnostics = {"digit_coverage": (p * ink).sum(1).mean().item(),  # E_{T ~ P(T|X)} fraction of the digit in the crop
                   "feature_std": code.std(0).mean().item(), "feature_std_uniform": code.shape[1] ** -0.5}
    H = torch.special.entr(p).sum(1).cpu().numpy()  # (n,) H(T|x) per canvas
    code, p, images, y = code.numpy(), p.cpu().numpy(), xb[:, 0].cpu().numpy(), np.asarray(y)
    order = y[:200].argsort()
    fig, ax = plt.subplots(figsize=(5, 4.4))
    im = ax.imshow(code[order] @ code[order].T, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set(title=f"{args.method}: cosine similarity of 200 test codes\n(sorted by class)", xticks=[], yticks=[])
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(os.path.join(run_dir, "similarity.png"), dpi=100, bbox_inches="tight")
    G, C = int(len(p[0]) ** 0.5), args.canvas
    fig, axes = plt.subplots(1, 6, figsize=(13, 2.6))
    for i, ax in enumerate(axes):  # crop centres run from 14 to C - 14 px
        ax.imshow(images[i], cmap="gray", extent=(0, C, C, 0))
        ax.imshow(p[i].reshape(G, G), cmap="magma", alpha=0.55, extent=(12, C - 12, C - 12, 12))
        ax.set(title=f"digit {y[i]}, H={H[i]:.1f} nats", xticks=[], yticks=[], xlim=(0, C), ylim=(C, 0))
    fig.suptitle(f"{args.method}: P(T|X) over crop centres")
    fig.savefig(os.path.join(run_dir, "channel.png"), dpi=100, bbox_inches="tight")
    if code.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(code[:, 0], code[:, 1], c=y[:len(code)], cmap="tab10", s=4)
        ax.set(title=f"{args.method}: 2-d codes of 1000 test images", aspect="equal", xlim=(-1.1, 1.1), ylim=(-1.1, 1.1))
        fig.savefig(os.path.join(run_dir, "scatter.png"), dpi=100, bbox_inches="tight")
    fig, axes = plt.subplots(1, len(history[0]), figsize=(5 * len(history[0]), 3))
    for ax, key in zip(np.atleast_1d(axes), history[0]):
        ax.plot([h[key] for h in history])
        ax.set(xlabel="step", title=key)
    fig.suptitle(f"{args.method}: probe (grid) f {accuracy['grid']['f']:.3f}, h {accuracy['grid']['h']:.3f}", y=1.05)
    fig.savefig(os.path.join(run_dir, "curves.png"), dpi=100, bbox_inches="tight")
    plt.close("all")
    return diagnostics


def table(probe_accuracy):
    """The poster's layout: one column per mode, rows f output then h output."""
    modes = list(probe_accuracy)
    lines = ["| output | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
    for name, label in (("f", "projection head f"), ("h", "encoder h")):
        lines.append(f"| {label} | " + " | ".join(f"{probe_accuracy[m][name]:.4f}" for m in modes) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Linear probe of a run's frozen features.")
    p.add_argument("run_dir", help="folder written by train.py")
    p.add_argument("--n-train", type=int, default=60000, help="train images for the probe (first of the split)")
    p.add_argument("--n-test", type=int, default=10000, help="test images (first of the split)")
    p.add_argument("--topn", type=int, default=10, help="n of the topn mode (10: best of 5, 10, 20 on a validation part of train)")
    a = p.parse_args(argv)
    if not os.path.exists(os.path.join(a.run_dir, "checkpoint.pt")):
        sys.exit(f"probe.py: error: {a.run_dir} holds no checkpoint.pt: is it a run folder of train.py?")
    args, encoder, channel, history = load_run(a.run_dir)
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"  # the run's own choice
    encoder, channel = encoder.to(device), channel.to(device)
    modes = ["grid"] + ["topn"] * (args.method == "ours") + ["oracle"] * (args.dataset == "regional")
    split = {}
    for name, n in (("train", a.n_train), ("test", a.n_test)):
        x, y, offsets, _ = load_canvases(args.data_dir, name, args.dataset, args.canvas, args.seed)
        split[name] = features(encoder, channel, x[:n], offsets[:n], modes, a.topn), y[:n].numpy()
    (train, train_y), (test, test_y) = split["train"], split["test"]
    accuracy = {m: {k: linear_probe(train[m][k], train_y, test[m][k], test_y, args.seed) for k in ("f", "h")}
                for m in modes}
    print(f"linear probe of {a.run_dir} ({args.method}, {len(train_y)} train / {len(test_y)} test images):")
    print(table(accuracy))
    path = os.path.join(a.run_dir, "metrics.json")
    with open(path) if os.path.exists(path) else io.StringIO("{}") as fh:
        metrics = json.load(fh)
    diagnostics = figures_and_diagnostics(a.run_dir, args, encoder, channel, x, y, history, accuracy)  # x, y: test
    print(", ".join(f"{k} {v:.3f}" for k, v in diagnostics.items()))
    save_json(path, {**metrics, **diagnostics, "probe": accuracy, "probe_images": {"train": len(train_y), "test": len(test_y)}})
    return accuracy


if __name__ == "__main__":
    main()
