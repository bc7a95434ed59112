"""Fixtures of the tests: float64 loops of the estimators, tiny MNIST files, tiny runs.

Each is independent of the code it checks: the loops follow METHOD.md's formulas term by
term, the IDX writer follows the format, not data.read_idx.
"""
import gzip
import math
import os
import struct

import numpy as np
import torch

import checkpoint
import data
import config
import figures
import model
import train
from channel import Channel, grid_offsets

BAD_INPUTS = [  # (arguments of train.py, what its one-line error must say)
    (["--canvas", "20"], "smaller than the 28x28 crop"), (["--canvas", "58"], "crop grid"),
    (["--beta", "0"], "--beta must be positive"), (["--beta", "nan"], "--beta must be finite"),
    (["--lr", "inf"], "--lr must be finite"), (["--steps", "-1"], "--steps must be non-negative"),
    (["--canvas", "1000000"], "needs about"), (["--batch-size", "100000000"], "needs about"),
    (["--method", "byol"], "invalid choice: 'byol'"), (["--resume"], "no checkpoint"),
    (["--channel-warmup", "0"], "--channel-warmup must be positive"),
    (["--batch-size", "0"], "--batch-size must be positive"), (["--canvas", "0"], "be positive"),
    (["--data-dir", "CORRUPT"], "gz: truncated"), (["--samples", "65"], "exceeds the 64 crops"),
    (["--samples", "-1"], "--samples must be non-negative"),
    (["--method", "simclr", "--samples", "2"], "the flag is for ours"),
    (["--method", "simclr", "--channel", "uniform"], "--channel: SimCLR has two uniform views"),
    (["--samples", "1"], "needs another draw"), (["--weights", "unnormalized"], "weighs its draws"),
    (["--objective", "bound", "--samples", "4"], "the bound is taken on the exact sum"),
    (["--schedule", "cosine", "--minutes", "1"], "cannot follow a --minutes budget")]


def random_inputs(B=3, K=4, d=5, seed=0, peak=1.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, K, d, generator=g, dtype=torch.float64)
    logp = peak * torch.randn(B, K, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(z, dim=-1), logp.log_softmax(1)


def mi_loop(z, logp, beta, jensen=False, leave_out_self=False):
    """Equation (2) on the grid, one (i, k) at a time in numpy float64; leave_out_self: the
    expectations over image i's own crops (num's, and den's at j = i) over l != k, their
    weights renormalized (the sampled encoder phase's)."""
    B, K, _ = z.shape
    z = z.numpy()  # (B, K, d)
    p = logp.exp().numpy()  # (B, K)
    total = 0.0
    for i, k in np.ndindex(B, K):
        e = np.exp(beta * z @ z[i, k])  # (B, K) exp(s[i,k,j,l])
        own = np.arange(K) != k if leave_out_self else np.ones(K, bool)  # (K,) l counted
        mean_own = p[i, own] @ e[i, own] / p[i, own].sum()  # E_{T'|x_i} exp(s)
        num = p[i] @ np.log(e[i]) if jensen else math.log(mean_own)  # the bound's: E_T' s
        den = math.log(((p * e).sum() - p[i] @ e[i] + mean_own) / B)  # j = i: mean_own
        total += p[i, k] * (num - den)
    return total / B


def two_view_loops(z1, z2, beta):
    """(NT-Xent, alignment, uniformity) of two views z1, z2 (B, d), pair by pair in numpy."""
    B = len(z1)
    v = np.concatenate([z1, z2])  # (2B, d)
    dot = v @ v.T  # (2B, 2B)
    dist2 = ((v[:, None] - v[None]) ** 2).sum(-1)  # (2B, 2B)
    losses = []
    for a in range(2 * B):  # anchor a; its other view is (a + B) mod 2B
        others = sum(math.exp(beta * dot[a, b]) for b in range(2 * B) if b != a)
        losses.append(math.log(others) - beta * dot[a, (a + B) % (2 * B)])
    loss = np.mean(losses)
    pairs = [math.exp(-2 * dist2[a, b]) for a in range(2 * B) for b in range(2 * B) if a != b]
    return loss, np.diag(dist2, B).mean(), math.log(np.mean(pairs))


def topn_loop(p, n):
    """Weight 1/n on the n largest entries of each row of p, by sorting."""
    weights = np.zeros_like(p)
    for i, row in enumerate(p):
        weights[i, np.argsort(-row)[:n]] = 1 / n
    return weights


def write_idx(path, array):
    """An IDX writer independent of data.read_idx: magic, big-endian dimensions, bytes."""
    raw = struct.pack(">4B", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(raw + array.astype(np.uint8).tobytes())


def fake_mnist(folder, n_train=96, n_test=48):
    """Tiny IDX files: a 12x12 patch of noise at the centre, crossed by a bar whose row is the
    class; the rest of the 28x28 digit is blank, so most crops of a canvas miss it."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 8:20, 8:20] = rng.integers(0, 128, (n, 12, 12))
        images[np.arange(n), 9 + labels, 8:20] = 255
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), labels)
    return str(folder)


def run(tmp_path, out, *extra, method="ours"):
    """A tiny training run on fake MNIST, on the CPU."""
    return train.main(["--method", method, "--data-dir", fake_mnist(tmp_path / "mnist"),
                       "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / out),
                       *extra])


def run_state(tmp_path, out):
    """MI, H(T|X), digit coverage and the channel's mass on blank crops (those that miss the
    digit, found crop by crop) of a finished run, on its first 64 train canvases."""
    args, encoder, channel, _ = checkpoint.load_run(str(tmp_path / out))
    x = data.load_canvases(args.data_dir, "train", args.dataset, args.canvas, args.seed)[0][:64]
    blank = torch.stack([x[:, 0, r:r + 28, c:c + 28].sum((1, 2)) == 0
                         for r, c in grid_offsets(args.canvas).tolist()], 1)  # (64, K)
    p = channel(x.to(next(channel.parameters()).dtype) / 255).exp()  # (64, K)
    return {**figures.diagnostics(args, encoder, channel, x),
            "blank_mass": (p * blank).sum(1).mean().item()}


def assert_close_to_largest(actual, expected, rel):
    """Each tensor of actual within rel times the largest entry of its tensor of expected: the
    float64 bounds of the tests are of that form (a sum's rounding scales with its terms)."""
    for a, b in zip(actual, expected, strict=True):
        assert (a - b).abs().max() <= rel * b.abs().max(), (a - b).abs().max() / b.abs().max()


def networks(peaked=False):
    """Fresh float64 (encoder, channel), the same at every call; peaked: the channel's P(T|X) off
    uniform."""
    torch.manual_seed(0)
    encoder, channel = model.Encoder().double(), Channel().double()
    if peaked:
        torch.nn.init.normal_(channel.net[-1].weight)
    return encoder, channel


def one_step(x, flags, peaked=False, rate=0.0):
    """One alternating_step of networks(peaked) in x's dtype (float64 or float32) on canvases x
    (B, 1, C, C), each by SGD at rate (at 0, (b) sees (a)'s encoder): (MI, {"encoder":
    gradients, "channel": gradients}, (encoder, channel) after the step)."""
    precision = str(x.dtype).removeprefix("torch.")
    args = config.parse_args(["--canvas", str(x.shape[-1]), "--precision", precision, *flags])
    encoder, channel = (net.to(x.dtype) for net in networks(peaked))
    sgd = [torch.optim.SGD(net.parameters(), lr=rate) for net in (encoder, channel)]
    grid = grid_offsets(x.shape[-1])
    g = torch.Generator().manual_seed(0)
    mi = train.alternating_step(args, encoder, channel, *sgd, x, grid, g)["MI"]
    grads = {"encoder": [w.grad for w in encoder.parameters()],
             "channel": [w.grad for w in channel.parameters()]}
    return mi, grads, (encoder, channel)


def call_at(monkeypatch, at, before=None, after=None):
    """Call before/after(encoder) around the training step number `at` (counting from 1)."""
    step = train.alternating_step
    calls = []

    def patched(args, encoder, *rest):
        calls.append(1)
        if len(calls) == at and before:
            before(encoder)
        shown = step(args, encoder, *rest)
        if len(calls) == at and after:
            after(encoder)
        return shown
    monkeypatch.setattr(train, "alternating_step", patched)


def corrupt_mnist(folder):
    """fake_mnist whose train images are cut short after the header."""
    fake_mnist(folder)
    with gzip.open(os.path.join(folder, "train-images-idx3-ubyte.gz"), "wb") as fh:
        fh.write(b"\0\0\x08\x03" + bytes(20))
    return str(folder)


def load(tmp_path, out):
    return torch.load(tmp_path / out / "checkpoint.pt", weights_only=True)
