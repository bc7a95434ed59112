"""The poster's linear classification protocol on frozen features.

    python probe.py RUN_DIR

Features of the encoder h (128-d) and of the projection head f (d-dim), in three modes:
  grid    averaged over the crop grid under the run's channel P(T|X) (uniform for simclr)
  topn    averaged over the n most probable crops under P(T|X) (ours)
  oracle  the crop at the true digit offset (the poster's "SimCLR (oracle)")
A scikit-learn logistic regression on the raw features (not standardized: rescaling each
feature would hide the collapse the poster measures, the representations of all images
crowding together) is fitted on the train split, its inverse regularization C chosen on the
last fifth of it (never on test), and scored on the test split.
Shapes: B batch, K crops, d embedding.
"""
import argparse
import io
import json
import os
import sys
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from channel import Channel, crops_at
from data import load_canvases, write_atomic
from model import Encoder

CS = (1.0, 10.0, 100.0)  # candidate C of the logistic regression
MAX_ITER = 500  # L-BFGS iterations per fit: part of the protocol, so a collapsed run may stop unconverged


def save_json(path, obj):
    write_atomic(path, lambda fh: fh.write(json.dumps(obj, indent=2).encode()))


def load_run(run_dir, device="cpu"):
    """(args, encoder, channel) of a run folder written by train.py, weights frozen."""
    with open(os.path.join(run_dir, "args.json")) as fh:
        args = argparse.Namespace(**json.load(fh))
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location=device, weights_only=True)
    encoder, channel = Encoder(args.dim).to(device), Channel().to(device)
    encoder.load_state_dict(ckpt["encoder"])
    channel.load_state_dict(ckpt["channel"])
    return args, encoder.eval().requires_grad_(False), channel.eval().requires_grad_(False)


@torch.no_grad()
def features(encoder, channel, x, offsets, modes, topn, batch=256):
    """{mode: {"h": (N, 128), "f": (N, d)}} numpy features of uint8 canvases x (N, 1, C, C)."""
    device = next(encoder.parameters()).device
    out = {m: {"h": [], "f": []} for m in modes}
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].to(device).float() / 255  # (B, 1, C, C)
        h, z = encoder(xb)  # (B, K, 128), (B, K, d)
        p = channel(xb).exp()  # (B, K)
        weights = {"grid": p}
        if "topn" in modes:
            weights["topn"] = torch.zeros_like(p).scatter_(1, p.topk(topn, dim=1).indices, 1 / topn)  # (B, K)
        for mode in modes:
            if mode == "oracle":
                h_o, z_o = encoder(crops_at(xb, offsets[i:i + batch]))  # (B, 1, 128), (B, 1, d)
                pairs = (("h", h_o[:, 0]), ("f", z_o[:, 0]))
            else:
                w = weights[mode][:, :, None]  # (B, K, 1)
                pairs = (("h", (w * h).sum(1)), ("f", (w * z).sum(1)))
            for name, value in pairs:
                out[mode][name].append(value.cpu().numpy())
    return {m: {k: np.concatenate(v) for k, v in out[m].items()} for m in modes}


def linear_probe(train_x, train_y, test_x, test_y, seed=0):
    """Test accuracy of a logistic regression, C chosen on the last fifth of train."""
    def fit(x, y, C):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed).fit(x, y)
    cut = len(train_x) * 4 // 5
    best = max(CS, key=lambda C: fit(train_x[:cut], train_y[:cut], C).score(train_x[cut:], train_y[cut:]))
    return float(fit(train_x, train_y, best).score(test_x, test_y))


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
    p.add_argument("--n-train", type=int, default=10000, help="train images for the probe (first of the split)")
    p.add_argument("--n-test", type=int, default=10000, help="test images (first of the split)")
    p.add_argument("--topn", type=int, default=5, help="n of the topn mode")
    a = p.parse_args(argv)
    for name in ("args.json", "checkpoint.pt"):
        if not os.path.exists(os.path.join(a.run_dir, name)):
            sys.exit(f"probe.py: error: {a.run_dir} holds no {name}: is it a run folder of train.py?")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args, encoder, channel = load_run(a.run_dir, device)
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
    save_json(path, {**metrics, "probe": accuracy, "probe_images": {"train": len(train_y), "test": len(test_y)}})
    return accuracy


if __name__ == "__main__":
    main()
