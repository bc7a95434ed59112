"""The poster's linear classification protocol on frozen features.

    python probe.py RUN_DIR          # fit on all 60,000 train images, score on the test split
    python probe.py RUN_DIR --val    # fit on the first 50,000, score on the last 10,000 of train

Features of the encoder h (256-d) and of the projection head f (d-dim), in three modes:
  grid    averaged over the crop grid under the run's channel P(T|X) (uniform for simclr)
  topn    averaged over the n most probable crops under P(T|X) (ours; n by dataset, TOPN)
  oracle  the crop at the true digit offset (the poster's "SimCLR (oracle)")
A scikit-learn logistic regression on the raw features, divided by one number (their root mean
square) so that one C grid suits every run: the geometry is kept, so a collapse stays visible;
beside it, for `grid`, one on standardized features shows how much of a low number is scale. C
is chosen on the last fifth of the fitting images, never on the scored split; every fit reports
whether it converged. Development decisions use --val; the test split, only the reported table.
"""
import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

import figures
from channel import crops_at
from checkpoint import load_run, save_json
from data import load_canvases
from model import autocast

CS = (0.1, 1.0, 10.0, 100.0, 1000.0)  # candidate C, widened by decades while the best is at an edge
SELECT = 10000  # images of the fits that choose C (the chosen C is then refitted on all of them)
MAX_ITER = 500  # Newton iterations per fit (converged fits here take 7 to 60): past it, reported
VAL = 50000  # --val fits on train[:VAL] and scores on train[VAL:]
TOPN = {"regional": 10, "mnist": 8}  # n < K of topn by dataset, chosen as NOTES.md says


def topn_weights(p, n):
    """Weight 1/n on each image's n most probable crops, 0 elsewhere: p (B, K) -> (B, K)."""
    n = min(n, p.shape[1])  # a small canvas may have fewer than n crops
    return torch.zeros_like(p).scatter_(1, p.topk(n, dim=1).indices, 1 / n)  # (B, K)


@torch.no_grad()
def features(encoder, channel, x, offsets, modes, topn, precision="float32", batch=500):
    """{mode: {"h": (N, 256), "f": (N, d)}} float32 numpy features of uint8 canvases x (N, 1, C, C),
    the networks run in the precision they were trained in (model.autocast); topn: {a topn
    mode: its n}."""
    param = next(encoder.parameters())  # the canvases go in the weights' device and dtype
    out = {m: {"h": [], "f": []} for m in modes}
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].to(param.device, param.dtype) / 255  # (B, 1, C, C)
        with autocast(param.device, precision):
            h, z = encoder(xb)  # (B, K, 256), (B, K, d)
            p = channel(xb).exp()  # (B, K)
            if "oracle" in modes:
                oracle = crops_at(xb, offsets[i:i + batch, None])  # (B, 1, 28, 28)
                h_o, z_o = encoder(oracle)  # (B, 1, 256), (B, 1, d)
        for mode in modes:
            if mode == "oracle":
                pairs = (("h", h_o[:, 0]), ("f", z_o[:, 0]))
            else:
                w = p if mode == "grid" else topn_weights(p, topn[mode])  # (B, K) crop weights
                w = w[:, :, None]  # (B, K, 1)
                pairs = (("h", (w * h).sum(1)), ("f", (w * z).sum(1)))
            for name, value in pairs:
                out[mode][name].append(value.float().cpu().numpy())
    return {m: {k: np.concatenate(v) for k, v in out[m].items()} for m in modes}


def fit(x, y, C, seed, init=None):
    """Multinomial logistic regression, warm-started from init's solution if given.

    Newton-CG: on a collapsed SimCLR code the problem is ill-conditioned, and L-BFGS stops
    unconverged after thousands of iterations where Newton-CG converges in tens.
    """
    model = LogisticRegression(C=C, solver="newton-cg", max_iter=MAX_ITER, random_state=seed,
                               warm_start=True)
    if init is not None:
        model.coef_, model.intercept_ = init.coef_.copy(), init.intercept_.copy()
    return model.fit(x, y)


def linear_probe(train_x, train_y, test_x, test_y, seed=0, standardize=False):
    """Accuracy on test of a fit on all of train, C chosen by fits on at most SELECT images of
    train's first four fifths scored on its last fifth; with the C and the iterations used."""
    cut = len(train_x) * 4 // 5
    if min(len(np.unique(train_y[:cut])), len(np.unique(train_y[cut:]))) < 2:
        sys.exit(f"probe.py: error: {len(train_x)} train images are too few: a part of them "
                 "holds one class")
    mean = train_x.mean(0)  # (D,)
    if standardize:
        scale = train_x.std(0) + 1e-12  # (D,) each feature's own deviation
    else:  # one number: the raw-feature problem exactly, C rescaled (the intercept is free)
        scale = np.sqrt(((train_x - mean) ** 2).mean())  # their root mean square
    train_x, test_x = (train_x - mean) / scale, (test_x - mean) / scale
    part = slice(0, min(cut, SELECT))  # the images of the fits that choose C
    fits = {}  # {C: its fit on part}
    grid = list(CS)
    with warnings.catch_warnings(record=True) as caught:  # recorded, not silenced
        warnings.simplefilter("always", ConvergenceWarning)
        while True:
            for C in sorted(set(grid) - set(fits)):  # each fit starts from its neighbour's
                fits[C] = fit(train_x[part], train_y[part], C, seed, fits.get(C / 10))
            score = {C: fits[C].score(train_x[cut:], train_y[cut:]) for C in grid}
            best = max(grid, key=score.get)
            if best not in (grid[0], grid[-1]) or len(grid) >= len(CS) + 3:
                break
            grid = [grid[0] / 10] + grid if best == grid[0] else grid + [grid[-1] * 10]
        model = fit(train_x, train_y, best, seed, fits[best])
    stalled = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    iterations = int(model.n_iter_[0])
    return {"accuracy": float(model.score(test_x, test_y)), "C": best,
            "iterations": iterations, "converged": iterations < MAX_ITER,
            "unconverged_selection_fits": stalled - (iterations >= MAX_ITER),  # less the final fit
            "C_at_edge": best in (grid[0], grid[-1])}


def table(probe):
    """The poster's layout: one column per mode, rows f output then h output."""
    modes = list(probe)
    lines = ["| output | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
    for name, label in (("f", "projection head f"), ("h", "encoder h")):
        cells = [f"{probe[m][name]['accuracy']:.4f}" for m in modes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Linear probe of a run's frozen features.")
    p.add_argument("run_dir", help="folder written by train.py")
    p.add_argument("--val", action="store_true", help="score on the last 10,000 train images")
    p.add_argument("--n-train", type=int, default=60000, help="train images (first of the split)")
    p.add_argument("--n-test", type=int, default=10000, help="test images (first of the split)")
    p.add_argument("--topn", type=int, nargs="+", help="n of topn (default: TOPN of the "
                   "dataset); each further n adds a column topN, to choose n on validation")
    a = p.parse_args(argv)
    if a.topn and min(a.topn) < 1:
        p.error(f"--topn must be positive, got {min(a.topn)}")
    t0 = time.perf_counter()
    args, encoder, channel, history = load_run(a.run_dir)
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    encoder, channel = encoder.to(device), channel.to(device)
    modes = ["grid"]
    ns = a.topn or [TOPN[args.dataset]]
    topn = {"topn": ns[0], **{f"top{m}": m for m in ns[1:]}}  # {mode: its n}
    if args.method == "ours" and getattr(args, "channel", "learned") == "learned":
        modes += list(topn)  # a uniform channel has no most probable crops
    if args.dataset == "regional":  # on MNIST every digit is the centre crop
        modes.append("oracle")
    x, y, offsets = load_canvases(args.data_dir, "train", args.dataset, args.canvas, args.seed)
    x, y, offsets = x[:a.n_train], y[:a.n_train].numpy(), offsets[:a.n_train]
    if a.val:  # the scored part is the end of train; the test split is not read
        n_fit = VAL if len(x) > VAL else len(x) * 5 // 6
        splits = {"train": (x[:n_fit], y[:n_fit], offsets[:n_fit]),
                  "test": (x[n_fit:], y[n_fit:], offsets[n_fit:])}
    else:
        x_t, y_t, o_t = load_canvases(args.data_dir, "test", args.dataset, args.canvas, args.seed)
        n = a.n_test
        splits = {"train": (x, y, offsets), "test": (x_t[:n], y_t[:n].numpy(), o_t[:n])}
    feats = {name: features(encoder, channel, xs, o, modes, topn, args.precision)
             for name, (xs, _, o) in splits.items()}
    train_y, test_y = splits["train"][1], splits["test"][1]
    probe = {}
    for mode in modes:
        probe[mode] = {k: linear_probe(feats["train"][mode][k], train_y, feats["test"][mode][k],
                                       test_y, args.seed) for k in ("f", "h")}
    standardized = {k: linear_probe(feats["train"]["grid"][k], train_y, feats["test"]["grid"][k],
                                    test_y, args.seed, standardize=True) for k in ("f", "h")}
    scored = "validation images (the end of train)" if a.val else "test images"
    print(f"linear probe of {a.run_dir} ({args.method}, fitted on {len(train_y)} train images, "
          f"scored on {len(test_y)} {scored}):\n{table(probe)}")
    print(f"standardized grid features: f {standardized['f']['accuracy']:.4f}, "
          f"h {standardized['h']['accuracy']:.4f}")
    stalled = [f"{m} {k}" for m in probe for k in "fh" if not probe[m][k]["converged"]]
    if stalled:
        print(f"probe.py: warning: the fits of {', '.join(stalled)} stopped unconverged at "
              f"{MAX_ITER} iterations")
    path = os.path.join(a.run_dir, "metrics.json")  # train.py writes it at the end of a run
    metrics = json.load(open(path)) if os.path.exists(path) else {}
    x_s, y_s, _ = splits["test"]  # figures and diagnostics of the scored split
    diagnostics = figures.diagnostics(args, encoder, channel, x_s[:1000].to(device))
    if not a.val:
        figures.draw(a.run_dir, args, encoder, channel, x_s[:1000].to(device), y_s, history,
                     probe["grid"])
    print(", ".join(f"{k} {v:.3f}" for k, v in diagnostics.items()))
    key = "val" if a.val else "test"
    metrics[f"probe_{key}"] = {**probe, "grid_standardized": standardized,
                               "images": {"fit": len(train_y), "scored": len(test_y)},
                               "diagnostics": diagnostics, "seconds": time.perf_counter() - t0}
    save_json(path, metrics)
    return probe


if __name__ == "__main__":
    main()
