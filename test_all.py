"""Tests: estimators against float64 loops, the math's inequalities, end-to-end runs. `pytest test_all.py`."""
import gzip, hashlib, http.server, json, math, os, signal, struct, threading, numpy as np, pytest, torch  # noqa
import data, model, objective, probe, train  # noqa: E401
from channel import Channel, crops_at, entropy, grid_offsets
from objective import alignment, exact_mi, nt_xent, simclr_bound, uniformity

def random_inputs(B=3, K=4, d=5, seed=0, peak=1.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(B, K, d, generator=g, dtype=torch.float64), dim=-1)
    return z, (peak * torch.randn(B, K, generator=g, dtype=torch.float64)).log_softmax(1)

def mi_loop(z, logp, beta, jensen=False):  # equation (2) on the grid, term by term in Python floats
    (B, K, _), total = z.shape, 0.0
    s = lambda i, k, j, l: beta * float(z[i, k] @ z[j, l])  # noqa: E731
    p = lambda i, l: math.exp(float(logp[i, l]))  # noqa: E731
    for i, k in np.ndindex(B, K):
        num = (sum(p(i, l) * s(i, k, i, l) for l in range(K)) if jensen
               else math.log(sum(p(i, l) * math.exp(s(i, k, i, l)) for l in range(K))))
        den = math.log(sum(p(j, l) * math.exp(s(i, k, j, l)) for j, l in np.ndindex(B, K)) / B)
        total += p(i, k) * (num - den)
    return total / B

@pytest.mark.parametrize("seed", range(8))
def test_estimators_match_loops_and_bound_below_mi_below_log_batch(seed, monkeypatch):
    z, logp = random_inputs(B=3 + seed % 3, seed=seed, peak=[0.1, 1.0, 10.0][seed // 3 % 3])
    beta = [0.5, 5.0, 50.0][seed % 3]
    mi, bound = exact_mi(z, logp, beta).item(), simclr_bound(z, logp, beta).item()
    assert mi == pytest.approx(mi_loop(z, logp, beta), rel=1e-10)
    assert bound == pytest.approx(mi_loop(z, logp, beta, jensen=True), rel=1e-10)
    assert bound <= mi + 1e-12 and mi <= math.log(len(z)) + 1e-12  # Jensen, and the InfoNCE ceiling
    v, B, n = torch.cat([z[:, 0], z[:, 1]]), len(z), 2 * len(z)  # two views of each image
    dot = lambda a, b: float(v[a] @ v[b])  # noqa: E731
    loss = sum(-2 * dot(a, (a + B) % n) + math.log(sum(math.exp(2 * dot(a, b)) for b in range(n) if b != a))
               for a in range(n)) / n
    assert nt_xent(z[:, 0], z[:, 1], 2.0).item() == pytest.approx(loss, rel=1e-10)
    dist2 = lambda a, b: float((v[a] - v[b]).norm()) ** 2  # noqa: E731
    assert alignment(z[:, 0], z[:, 1]).item() == pytest.approx(sum(dist2(a, a + B) for a in range(B)) / B)
    pairs = [math.exp(-2 * dist2(a, b)) for a in range(n) for b in range(n) if a != b]
    assert uniformity(v).item() == pytest.approx(math.log(sum(pairs) / len(pairs)), rel=1e-10)
    monkeypatch.setitem(objective.CHUNK_ELEMENTS, "cpu", 50)  # stream the (N, N) similarities 2 to 4 rows at a time
    assert exact_mi(z, logp, beta).item() == pytest.approx(mi, rel=1e-12)
    for estimator in (exact_mi, simclr_bound):  # the hand-written backward against finite differences
        assert torch.autograd.gradcheck(lambda z, logp: estimator(z, logp, beta), (z.requires_grad_(), logp.requires_grad_()))

@pytest.mark.parametrize("canvas", [36, 56])
def test_one_pass_encoder_equals_per_crop(canvas):
    torch.manual_seed(0)
    encoder, x, offsets = model.Encoder(), torch.rand(2, 1, canvas, canvas), grid_offsets(canvas)
    h, z = encoder(x)  # (2, K, 256), (2, K, 50)
    assert h.shape == (2, len(offsets), model.FEATURES) and len(offsets) == ((canvas - 28) // 4 + 1) ** 2
    for k, offset in enumerate(offsets):
        h_k, z_k = encoder(crops_at(x, offset.expand(2, 2)))
        torch.testing.assert_close((h[:, k], z[:, k]), (h_k[:, 0], z_k[:, 0]), atol=1e-5, rtol=1e-5)

def test_channel_sums_to_one_starts_uniform_and_gradients_reach_both_nets():
    torch.manual_seed(0)
    encoder, channel, x = model.Encoder(), Channel(), torch.rand(4, 1, 56, 56)
    torch.testing.assert_close(channel(x), torch.full((4, 64), -math.log(64)))
    opt = torch.optim.SGD(channel.parameters(), lr=100.0)
    for _ in range(2):  # the last layer starts at zero: inner layers get gradient once it has moved
        opt.zero_grad(), encoder.zero_grad()
        (-(exact_mi(encoder(x)[1], logp := channel(x), 5.0) + 0.5 * entropy(logp))).backward()
        opt.step()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in [*encoder.parameters(), *channel.parameters()])
    assert channel(x).std() > 1e-4  # trained away from uniform, and still normalized:
    torch.testing.assert_close(channel(x).exp().sum(1), torch.ones(4))

def test_regional_canvases_are_deterministic_and_hold_the_digit():
    images = torch.randint(1, 256, (50, 28, 28), dtype=torch.uint8)
    x, offsets = data.make_canvases(images, "regional", 56, seed=7)
    assert all(torch.equal(a, b) for a, b in zip((x, offsets), data.make_canvases(images, "regional", 56, 7)))
    assert not torch.equal(offsets, data.make_canvases(images, "regional", 56, seed=8)[1])
    assert offsets.min() >= 0 and offsets.max() <= 28 and len(offsets.unique()) > 10
    assert torch.equal(crops_at(x, offsets)[:, 0], images)  # the oracle crop is the digit
    assert torch.equal(x.sum((1, 2, 3)), images.sum((1, 2), dtype=torch.int64))  # and nothing else is drawn
    centred, mnist_offsets = data.make_canvases(images, "mnist", 36, seed=7)
    assert (mnist_offsets == 4).all() and torch.equal(centred[:, 0, 4:32, 4:32], images)

def write_idx(path, array):  # an IDX writer independent of data.read_idx: magic, big-endian dims, bytes
    raw = struct.pack(">4B", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as fh:
        fh.write(raw + array.astype(np.uint8).tobytes())
def fake_mnist(folder, n_train=96, n_test=48):  # tiny IDX files; a bar whose row is the class gives signal
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels, images = rng.integers(0, 10, n), rng.integers(0, 60, (n, 28, 28))
        images[np.arange(n)[:, None], 4 + 2 * labels[:, None] + np.arange(2)] = 255
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), labels)
    return str(folder)

def test_idx_round_trip_corrupt_files_and_offline_fallback(tmp_path, capsys):
    array = np.random.default_rng(0).integers(0, 256, (7, 28, 28))
    for name in ("a.gz", "b"):  # gzipped and raw
        write_idx(tmp_path / name, array)
        assert np.array_equal(data.read_idx(str(tmp_path / name)), array)
    for name, content in {"truncated": (tmp_path / "b").read_bytes()[:-10], "text": b"hello world",
                          "broken.gz": (tmp_path / "a.gz").read_bytes()[:90]}.items():
        (tmp_path / name).write_bytes(content)
        pytest.raises(ValueError, data.read_idx, str(tmp_path / name)).match(str(tmp_path / name))
    assert [t.shape for t in data.load_mnist(fake_mnist(tmp_path / "mnist"), "test")[:2]] == [(48, 28, 28), (48,)]
    images, labels, source = data.load_mnist(str(tmp_path / "empty"), "train", mirrors=())
    assert source == "sklearn-digits" and images.shape[1:] == (28, 28) and set(labels.tolist()) == set(range(10))
    assert "scikit-learn" in capsys.readouterr().err

def run(tmp_path, out, *extra, method="ours"):  # a tiny training run on fake MNIST
    data_dir = fake_mnist(tmp_path / "mnist")
    return train.main(["--method", method, "--data-dir", data_dir, "--batch-size", "8", "--out", str(tmp_path / out), *extra])
def checkpoint(tmp_path, out):
    return torch.load(tmp_path / out / "checkpoint.pt", weights_only=True)
def around_step(monkeypatch, at, before=None, after=None):  # call before/after(encoder) around step `at`'s loss
    step_loss, calls = train.step_loss, []
    def patched(args, encoder, *rest):  # noqa: E306
        calls.append(1)
        if len(calls) == at and before:
            before(encoder)
        loss_and_shown = step_loss(args, encoder, *rest)
        if len(calls) == at and after:
            after(encoder)
        return loss_and_shown
    monkeypatch.setattr(train, "step_loss", patched)

@pytest.mark.parametrize("method", ["ours", "simclr"])
def test_train_and_probe_end_to_end(tmp_path, monkeypatch, method):
    metrics = run(tmp_path, "run", "--steps", "4", method=method)
    saved = json.load(open(tmp_path / "run" / "metrics.json"))
    assert {k: saved[k] for k in metrics} == metrics and saved["data_source"] == "mnist" and saved["steps"] == 4
    assert all(math.isfinite(v) for v in saved.values() if isinstance(v, float)) and "alignment" in saved
    modes = {"grid", "oracle"} | ({"topn"} if method == "ours" else set())
    assert set(saved["probe"]) == modes and all(0 <= saved["probe"][m][k] <= 1 for m in modes for k in "fh")
    assert 0 < saved["digit_coverage"] <= 1 and 0 < saved["feature_std"] < saved["feature_std_uniform"] * 2
    assert all((tmp_path / "run" / png).stat().st_size > 0 for png in ("similarity.png", "channel.png", "curves.png"))
    accuracy = probe.main([str(tmp_path / "run"), "--n-train", "40", "--n-test", "20"])
    assert json.load(open(tmp_path / "run" / "metrics.json"))["probe"] == accuracy
    monkeypatch.setattr(model, "FEATURES", 128)  # weights of another encoder width are refused in one line
    pytest.raises(SystemExit, probe.main, [str(tmp_path / "run")]).match("do not fit this model.py: size mismatch")

def test_same_seed_same_losses_and_resume_or_interrupt_is_bit_identical(tmp_path, monkeypatch):
    run(tmp_path, "straight", "--steps", "20", "--no-probe")
    run(tmp_path, "resumed", "--steps", "10", "--no-probe")
    run(tmp_path, "resumed", "--steps", "20", "--no-probe", "--resume")
    with monkeypatch.context() as patch, pytest.raises(SystemExit, match="interrupted: checkpoint of step 6"):
        around_step(patch, 6, before=lambda encoder: signal.raise_signal(signal.SIGINT))  # Ctrl-C in step 6
        run(tmp_path, "interrupted", "--steps", "20", "--no-probe")
    run(tmp_path, "interrupted", "--steps", "20", "--no-probe", "--resume")
    straight = checkpoint(tmp_path, "straight")
    for out in ("resumed", "interrupted"):
        other = checkpoint(tmp_path, out)
        assert other["history"] == straight["history"] and other["step"] == 20
        assert all(torch.equal(w, other[net][k]) for net in ("encoder", "channel") for k, w in straight[net].items())
    args_json = (tmp_path / "straight" / "args.json").read_text()
    with pytest.raises(SystemExit, match="beta=5.0, not 7.0"):  # a checkpoint of another configuration
        run(tmp_path, "straight", "--steps", "30", "--beta", "7", "--resume")
    assert (tmp_path / "straight" / "args.json").read_text() == args_json
    monkeypatch.setattr(torch, "save", lambda obj, fh: fh.write(b"half a checkpoint") / 0)  # killed while saving
    with pytest.raises(ZeroDivisionError):
        run(tmp_path, "straight", "--steps", "22", "--no-probe", "--resume")
    assert checkpoint(tmp_path, "straight")["step"] == 20  # the previous checkpoint is intact

@pytest.mark.parametrize("where", ["objective", "weights"])
def test_non_finite_values_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch, where):
    poison = lambda encoder: encoder.f[0].weight.data.fill_(float("nan"))  # noqa: E731
    around_step(monkeypatch, 5, **{"before" if where == "objective" else "after": poison})
    with pytest.raises(SystemExit, match=f"step {4 + (where == 'weights')}: the {where}"):  # 0-based steps
        run(tmp_path, "run", "--steps", "20", "--save-every", "1", "--no-probe")
    assert checkpoint(tmp_path, "run")["step"] == 4

@pytest.mark.parametrize("extra, message", [
    (["--canvas", "20"], "canvas 20 is smaller than the 28x28 crop"), (["--canvas", "58"], "not on the crop grid"),
    (["--beta", "0"], "--beta must be positive"), (["--batch-size", "-1"], "--batch-size must be positive"),
    (["--steps", "0"], "--steps must be positive"), (["--method", "byol"], "invalid choice: 'byol'"),
    (["--dataset", "mnist!"], "invalid choice"), (["--resume"], "no checkpoint"), (["--data-dir", "CORRUPT"], "gz: truncated")])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, extra, message):
    good, corrupt = fake_mnist(tmp_path / "mnist"), fake_mnist(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x03" + bytes(20)))
    with pytest.raises(SystemExit) as error:
        train.main(["--out", str(tmp_path / "run"), "--data-dir", good, *[corrupt if a == "CORRUPT" else a for a in extra]])
    assert message in str(error.value.code) and "\n" not in str(error.value.code).strip()
    assert not (tmp_path / "run").exists()

def test_download_checks_md5_and_leaves_no_partial_file(tmp_path):
    body = os.urandom(5000)
    class Mirror(http.server.BaseHTTPRequestHandler):  # noqa: E306
        def do_GET(self):  # noqa: E306  /drop: the connection dies after 1000 of 5000 bytes
            self.send_response(200), self.send_header("Content-Length", str(len(body))), self.end_headers()
            self.wfile.write(body[:1000] if self.path == "/drop" else body)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, md5, target = f"http://127.0.0.1:{server.server_port}", hashlib.md5(body).hexdigest(), tmp_path / "f.gz"
    for path, expected_md5, error in (("/good", "0" * 32, "MD5"), ("/drop", md5, "connection dropped")):
        with pytest.raises(OSError, match=error):
            data.download(url + path, str(target), expected_md5, timeout=5)
        assert os.listdir(tmp_path) == []  # neither the file nor its temporary part is left
    data.download(url + "/good", str(target), md5, timeout=5)
    with pytest.raises(OSError):  # writes are atomic: a failure over a good file leaves the good file
        data.download(url + "/drop", str(target), md5, timeout=5)
    assert target.read_bytes() == body and os.listdir(tmp_path) == ["f.gz"]
    server.shutdown()
