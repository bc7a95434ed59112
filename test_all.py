"""Tests: each estimator against a float64 loop over pairs, the inequalities the math
guarantees, the one-pass encoder against per-crop encoding, and small end-to-end runs.
Offline, CPU, small tensors: `pytest test_all.py`."""
import gzip
import json
import math
import os
import struct

import numpy as np
import pytest
import torch

import objective
import probe
import train
from channel import Channel, crops_at, entropy, grid_offsets
from data import load_mnist, make_canvases, read_idx
from model import Encoder
from objective import alignment, exact_mi, nt_xent, simclr_bound, uniformity


def random_inputs(B=3, K=4, d=5, seed=0, peak=1.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(B, K, d, generator=g, dtype=torch.float64), dim=-1)
    logp = (peak * torch.randn(B, K, generator=g, dtype=torch.float64)).log_softmax(1)
    return z, logp


def mi_loop(z, logp, beta, jensen=False):
    """Equation (2) on the grid, term by term in Python floats."""
    B, K, _ = z.shape
    s = lambda i, k, j, l: beta * float(z[i, k] @ z[j, l])
    p = lambda i, l: math.exp(float(logp[i, l]))
    total = 0.0
    for i in range(B):
        for k in range(K):
            if jensen:
                num = sum(p(i, l) * s(i, k, i, l) for l in range(K))
            else:
                num = math.log(sum(p(i, l) * math.exp(s(i, k, i, l)) for l in range(K)))
            den = math.log(sum(p(j, l) * math.exp(s(i, k, j, l)) for j in range(B) for l in range(K)) / B)
            total += p(i, k) * (num - den)
    return total / B


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_mi_and_bound_match_loops(seed):
    z, logp = random_inputs(seed=seed)
    assert exact_mi(z, logp, 3.0).item() == pytest.approx(mi_loop(z, logp, 3.0), rel=1e-10)
    assert simclr_bound(z, logp, 3.0).item() == pytest.approx(mi_loop(z, logp, 3.0, jensen=True), rel=1e-10)


def test_nt_xent_matches_loop():
    z, _ = random_inputs(B=5, K=2, d=4)
    z1, z2, beta = z[:, 0], z[:, 1], 2.0
    views, n = torch.cat([z1, z2]), 10
    loss = 0.0
    for a in range(n):
        logits = [beta * float(views[a] @ views[b]) for b in range(n) if b != a]
        loss += -beta * float(views[a] @ views[(a + 5) % n]) + math.log(sum(math.exp(v) for v in logits))
    assert nt_xent(z1, z2, beta).item() == pytest.approx(loss / n, rel=1e-10)


def test_alignment_and_uniformity_match_loops():
    z, _ = random_inputs(B=6, K=2, d=3)
    z1, z2 = z[:, 0], z[:, 1]
    align = sum(float((z1[i] - z2[i]).norm()) ** 2 for i in range(6)) / 6
    pairs = [math.exp(-2 * float((z1[i] - z1[j]).norm()) ** 2) for i in range(6) for j in range(6) if i != j]
    assert alignment(z1, z2).item() == pytest.approx(align, rel=1e-10)
    assert uniformity(z1).item() == pytest.approx(math.log(sum(pairs) / len(pairs)), rel=1e-10)


@pytest.mark.parametrize("seed", range(20))
def test_bound_below_mi_below_log_batch(seed):
    beta = [0.5, 5.0, 20.0][seed % 3]
    z, logp = random_inputs(B=4 + seed % 5, K=6, d=3, seed=seed, peak=[0.1, 1.0, 10.0][seed % 3])
    bound, mi = simclr_bound(z, logp, beta).item(), exact_mi(z, logp, beta).item()
    assert bound <= mi + 1e-12
    assert mi <= math.log(len(z)) + 1e-12


def test_chunked_denominator_is_exact(monkeypatch):
    z, logp = random_inputs(B=6, K=4, d=5, seed=3)
    z.requires_grad_(True)
    logp.requires_grad_(True)
    whole = exact_mi(z, logp, 4.0)
    grads = torch.autograd.grad(whole, (z, logp))
    monkeypatch.setattr(objective, "CHUNK", 5)  # 24 rows in 5 chunks, recomputed in backward
    chunked = exact_mi(z, logp, 4.0)
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-12)
    for a, b in zip(grads, torch.autograd.grad(chunked, (z, logp))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("canvas", [36, 56])
def test_one_pass_encoder_equals_per_crop(canvas):
    torch.manual_seed(0)
    encoder, x = Encoder(), torch.rand(2, 1, canvas, canvas)
    h, z = encoder(x)  # (2, K, 128), (2, K, 50)
    offsets = grid_offsets(canvas)
    assert h.shape == (2, len(offsets), 128)
    for k, offset in enumerate(offsets):
        h_k, z_k = encoder(crops_at(x, offset.expand(2, 2)))
        torch.testing.assert_close(h[:, k], h_k[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(z[:, k], z_k[:, 0], atol=1e-5, rtol=1e-5)


def test_channel_sums_to_one_and_starts_uniform():
    torch.manual_seed(0)
    channel, x = Channel(), torch.rand(3, 1, 56, 56)
    logp = channel(x)
    torch.testing.assert_close(logp, torch.full((3, 64), -math.log(64)))
    assert entropy(logp).item() == pytest.approx(math.log(64), rel=1e-6)
    for w in channel.parameters():
        torch.nn.init.normal_(w)
    logp = channel(x)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(3))
    assert logp.std() > 0.1 and entropy(logp).item() < math.log(64)


def test_gradients_reach_encoder_and_channel():
    torch.manual_seed(0)
    encoder, channel, x = Encoder(), Channel(), torch.rand(4, 1, 56, 56)
    opt = torch.optim.SGD(channel.parameters(), lr=0.1)
    for _ in range(2):  # the channel's last layer starts at zero: its inner layers get gradient once it moved
        opt.zero_grad()
        encoder.zero_grad()
        logp = channel(x)
        (-(exact_mi(encoder(x)[1], logp, 5.0) + 0.5 * entropy(logp))).backward()
        opt.step()
    for name, w in [*encoder.named_parameters(), *channel.named_parameters()]:
        assert w.grad is not None and w.grad.abs().sum() > 0, name


def test_regional_canvases_are_deterministic_and_hold_the_digit():
    images = torch.randint(1, 256, (50, 28, 28), dtype=torch.uint8)
    x, offsets = make_canvases(images, "regional", 56, seed=7)
    x2, offsets2 = make_canvases(images, "regional", 56, seed=7)
    assert torch.equal(x, x2) and torch.equal(offsets, offsets2)
    assert not torch.equal(offsets, make_canvases(images, "regional", 56, seed=8)[1])
    assert offsets.min() >= 0 and offsets.max() <= 28 and len(offsets.unique()) > 10
    assert torch.equal(crops_at(x, offsets)[:, 0], images)  # the oracle crop is the digit
    assert torch.equal(x.sum((1, 2, 3)), images.sum((1, 2), dtype=torch.int64))  # nothing else on the canvas
    centred, mnist_offsets = make_canvases(images, "mnist", 36, seed=7)
    assert (mnist_offsets == 4).all() and torch.equal(centred[:, 0, 4:32, 4:32], images)


def write_idx(path, array):
    """An IDX writer independent of data.read_idx: magic, big-endian dims, bytes."""
    raw = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as fh:
        fh.write(raw)


def test_idx_round_trip_and_corrupt_files(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (7, 28, 28))
    for name in ("a.gz", "b"):
        write_idx(str(tmp_path / name), array)
        assert np.array_equal(read_idx(str(tmp_path / name)), array)
    truncated = tmp_path / "truncated"
    truncated.write_bytes((tmp_path / "b").read_bytes()[:-10])
    broken_gzip = tmp_path / "broken.gz"
    broken_gzip.write_bytes((tmp_path / "a.gz").read_bytes()[:100])
    not_idx = tmp_path / "text"
    not_idx.write_bytes(b"hello world")
    for bad in (truncated, broken_gzip, not_idx):
        with pytest.raises(ValueError, match=str(bad)):
            read_idx(str(bad))


def fake_mnist(folder, n_train=96, n_test=48):
    """Tiny IDX files in MNIST's names: a class-dependent bar, so the probe has signal."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, y in enumerate(labels):
            images[i, 4 + 2 * y: 6 + 2 * y, 4:24] = 255
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), labels)
    return str(folder)


def test_load_mnist_reads_idx_and_falls_back_offline(tmp_path, capsys):
    images, labels, source = load_mnist(fake_mnist(tmp_path / "mnist"), "test")
    assert images.shape == (48, 28, 28) and labels.shape == (48,) and source == "mnist"
    images, labels, source = load_mnist(str(tmp_path / "empty"), "train", mirrors=())
    assert source == "sklearn-digits" and images.shape[1:] == (28, 28) and labels.max() == 9
    assert "scikit-learn" in capsys.readouterr().err


def tiny_run(tmp_path, method, out, *extra):
    data = fake_mnist(tmp_path / "mnist")
    return train.main(["--method", method, "--data-dir", data, "--steps", "4", "--batch-size", "8",
                       "--out", str(tmp_path / out), *extra])


@pytest.mark.parametrize("method", ["ours", "simclr"])
def test_train_and_probe_end_to_end(tmp_path, method):
    metrics = tiny_run(tmp_path, method, "run")
    saved = json.load(open(tmp_path / "run" / "metrics.json"))
    for key in ("data_source", "steps", "train_seconds", "images_per_second", "mi", "entropy",
                "alignment", "uniformity"):
        assert saved[key] == metrics[key]
    modes = {"ours": {"grid", "topn", "oracle"}, "simclr": {"grid", "oracle"}}[method]
    assert set(saved["probe"]) == modes and all(0 <= saved["probe"][m]["h"] <= 1 for m in modes)
    assert saved["data_source"] == "mnist" and saved["steps"] == 4
    accuracy = probe.main([str(tmp_path / "run"), "--n-train", "40", "--n-test", "20"])
    assert json.load(open(tmp_path / "run" / "metrics.json"))["probe"] == accuracy


def test_same_seed_same_losses(tmp_path):
    histories = []
    for out in ("a", "b", "c"):
        tiny_run(tmp_path, "ours", out, "--no-probe", "--seed", "1" if out == "c" else "0")
        histories.append(torch.load(tmp_path / out / "checkpoint.pt", weights_only=True)["history"])
    assert histories[0] == histories[1] and histories[0] != histories[2]
