"""Tests of crl-tac (`pytest test_all.py`): float64 loops, the math's guarantees, learning."""
import json
import math
import signal
import sys

import numpy as np
import pytest
import torch

import algorithm_tests
import bench
import data_tests
import distributed_tests
import model
import objective_tests
import probe
import reproduce
import sampling_tests
import train
from channel import Channel, crops_at, grid_offsets
from fixtures import BAD_INPUTS, call_at, corrupt_mnist, fake_mnist, load, networks, run, topn_loop

# pytest collects the test functions in this module's namespace, where these modules' tests join
# them (Algorithm 1's, data.py's, distributed.py's, objective.py's, sampling.py's): files named so
# that a bare `pytest`, which collects test_*.py, runs each test once too
for module in (algorithm_tests, data_tests, distributed_tests, objective_tests, sampling_tests):
    globals().update({name: f for name, f in vars(module).items() if name.startswith("test_")})


@pytest.mark.parametrize("canvas", [36, 56])
def test_one_pass_encoder_and_channel_equal_per_crop(canvas):
    """Translation equivariance makes them equal; in float64 they differ by the order of the
    convolutions' sums, n u |terms| <= 1,600 x 1.1e-16 = 2e-13 of the largest value (allowed
    1e-10 of each value and 1e-12, measured 7e-15)."""
    encoder, channel = networks()
    x = torch.rand(2, 1, canvas, canvas, dtype=torch.float64)  # (2, 1, C, C)
    K = len(grid_offsets(canvas))
    uniform = torch.full((2, K), -math.log(K), dtype=torch.float64)  # (2, K)
    torch.testing.assert_close(channel(x), uniform, rtol=1e-14, atol=0)  # zero logits
    torch.nn.init.normal_(channel.net[-1].weight)  # leave the uniform start
    h, z = encoder(x)  # (2, K, 256), (2, K, 50)
    logits = channel.net(x).flatten(1)  # (2, K) before the softmax
    close = dict(rtol=1e-10, atol=1e-12)
    for k, offset in enumerate(grid_offsets(canvas)):  # each crop evaluated on its own
        crop = crops_at(x, offset.expand(2, 1, 2))  # (2, 1, 28, 28)
        h_k, z_k = encoder(crop)
        torch.testing.assert_close((h[:, k], z[:, k]), (h_k[:, 0], z_k[:, 0]), **close)
        torch.testing.assert_close(logits[:, k], channel.net(crop).flatten(), **close)
    x, encoder, channel = x.float(), encoder.float(), channel.float()
    with model.autocast(x.device, "bf16"):  # networks in bf16: z and log P come out float32
        z, p = encoder(x)[1], channel(x).exp()  # (2, K, 50), (2, K)
    # float32 rounds a norm of d = 50 terms or a sum of K = 64 by at most 64 u = 4e-6 < 1e-5
    ones = (torch.ones(2, K), torch.ones(2))
    torch.testing.assert_close((z.norm(dim=-1), p.sum(1)), ones, rtol=0, atol=1e-5)


def test_topn_weights_and_c_selection_never_reads_the_scored_split():
    p = torch.rand(5, 12).softmax(1)
    np.testing.assert_allclose(probe.topn_weights(p, 3).numpy(), topn_loop(p.numpy(), 3))
    y = np.arange(300) % 3
    x = np.random.default_rng(0).normal(size=(300, 4)) + y[:, None]  # (300, 4) three clusters
    first = probe.linear_probe(x[:200], y[:200], x[200:], y[200:])
    other = probe.linear_probe(x[:200], y[:200], -x[200:], (y[200:] + 1) % 3)  # other test split
    assert first["C"] == other["C"] and first["iterations"] == other["iterations"]
    assert first["converged"] and first["accuracy"] > 0.6 > other["accuracy"]


@pytest.mark.parametrize("method", ["ours", "simclr"])
def test_train_and_probe_end_to_end(tmp_path, monkeypatch, method):
    metrics = run(tmp_path, "run", "--steps", "4", method=method)
    saved = json.load(open(tmp_path / "run" / "metrics.json"))
    assert {k: saved[k] for k in metrics} == metrics and saved["steps"] == 4
    modes = {"grid", "oracle", "grid_standardized"}
    if method == "ours":
        modes.add("topn")
    fits = [saved["probe_test"][m][k] for m in modes for k in "fh"]
    assert all(0 <= fit["accuracy"] <= 1 and fit["converged"] for fit in fits)
    assert 0 < saved["probe_test"]["seconds"]
    assert 0 < saved["probe_test"]["diagnostics"]["feature_std"]
    assert all((tmp_path / "run" / png).stat().st_size for png in ("similarity.png", "curves.png"))
    probe.main([str(tmp_path / "run"), "--val"])  # adds the validation probe, keeps the test one
    again = json.load(open(tmp_path / "run" / "metrics.json"))
    assert again["probe_test"] == saved["probe_test"] and again["probe_val"]["images"]["fit"] == 80
    monkeypatch.setattr(model, "FEATURES", 128)  # weights of another width: refused in one line
    pytest.raises(SystemExit, probe.main, [str(tmp_path / "run")]).match("size mismatch")


@pytest.mark.parametrize("samples", ["0", "4"])  # exact, and the crops drawn from the generator
def test_same_seed_same_run_and_resume_or_interrupt_is_bit_identical(tmp_path, monkeypatch,
                                                                      samples):
    quick = ["--no-probe", "--log-every", "1", "--samples", samples]
    run(tmp_path, "straight", "--steps", "20", *quick)
    run(tmp_path, "resumed", "--steps", "10", *quick)
    run(tmp_path, "resumed", "--steps", "20", *quick, "--resume")
    with monkeypatch.context() as patch, pytest.raises(SystemExit, match="checkpoint of step 6"):
        call_at(patch, 6, before=lambda encoder: signal.raise_signal(signal.SIGINT))  # Ctrl-C
        run(tmp_path, "stopped", "--steps", "20", *quick)
    run(tmp_path, "stopped", "--steps", "20", *quick, "--resume")
    straight = load(tmp_path, "straight")
    assert straight["opt_eta"]["param_groups"][0]["lr"] == 1e-3 * (20 / 250)  # warming up
    for out in ("resumed", "stopped"):
        other = load(tmp_path, out)
        assert other["history"] == straight["history"] and other["step"] == 20
        for net in ("encoder", "channel"):
            assert all(torch.equal(w, other[net][k]) for k, w in straight[net].items())
    run(tmp_path, "cosine", "--steps", "4", *quick, "--schedule", "cosine")
    rate = load(tmp_path, "cosine")["opt_theta"]["param_groups"][0]["lr"]  # that of step 4
    assert rate == pytest.approx(1e-3 * (1 + math.cos(math.pi * 3 / 4)) / 2)  # and not --lr
    args_json = (tmp_path / "straight" / "args.json").read_text()
    with pytest.raises(SystemExit, match="beta=5.0, not 7.0"):  # of another configuration
        run(tmp_path, "straight", "--steps", "30", *quick, "--beta", "7", "--resume")
    assert (tmp_path / "straight" / "args.json").read_text() == args_json
    monkeypatch.setattr(torch, "save", lambda obj, fh: fh.write(b"half") / 0)  # killed mid-save
    with pytest.raises(ZeroDivisionError):
        run(tmp_path, "straight", "--steps", "22", *quick, "--resume")
    assert load(tmp_path, "straight")["step"] == 20  # the previous checkpoint is intact


@pytest.mark.parametrize("where", ["objective", "weights"])
def test_non_finite_values_stop_the_run_and_keep_the_checkpoint(tmp_path, monkeypatch, where):
    def poison(encoder):
        encoder.f[0].weight.data.fill_(float("nan"))
    if where == "objective":  # the 5th step (step 4, counted from 0) has a NaN objective
        call_at(monkeypatch, 5, before=poison)
        message = "step 4: the objective"
    else:  # the 5th step leaves NaN weights: its checkpoint, of step 5, is refused
        call_at(monkeypatch, 5, after=poison)
        message = "step 5: the weights"
    with pytest.raises(SystemExit, match=message):
        run(tmp_path, "run", "--steps", "20", "--save-every", "1", "--log-every", "1",
            "--no-probe")
    assert load(tmp_path, "run")["step"] == 4


@pytest.mark.parametrize("extra, message", BAD_INPUTS)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, extra, message):
    extra = [corrupt_mnist(tmp_path / "corrupt") if a == "CORRUPT" else a for a in extra]
    with pytest.raises(SystemExit) as error:
        train.main(["--out", str(tmp_path / "run"), "--data-dir", fake_mnist(tmp_path), *extra])
    assert message in str(error.value.code) and "\n" not in str(error.value.code).strip()
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_smoke(tmp_path):
    run(tmp_path, "run", "--steps", "3", "--device", "cuda")  # the last --device counts
    assert json.load(open(tmp_path / "run" / "metrics.json"))["device"].startswith("cuda")


@pytest.mark.parametrize("method", ["ours", "simclr"])
def test_bench_times_the_steps_train_py_takes(method):
    torch.manual_seed(0)  # as bench.training_steps, before it builds its networks
    fresh = [model.Encoder(), Channel()]
    trained = bench.training_steps(method, 4, canvas=32, repeats=2)  # (encoder, channel)
    moved = [[not torch.equal(a, b) for a, b in zip(old.parameters(), new.parameters())]
             for old, new in zip(fresh, trained)]  # per network, whether each tensor moved
    assert all(moved[0])  # every encoder tensor trained
    if method == "ours":  # the channel's first layer moves from the second step, once the
        assert all(moved[1])  # zeroed last layer has moved
    else:
        assert not any(moved[1])  # simclr does not train the channel


def test_reproduce_runs_what_is_missing_and_tabulates_the_probes(tmp_path, monkeypatch):
    """reproduce.py's bookkeeping, its runs stood in for by processes that write a probe."""
    monkeypatch.chdir(tmp_path)
    command = reproduce.command

    def stand_in(method, dataset, seed, extra):  # accuracy 0.9 + seed / 100 in every cell
        out, argv = command(method, dataset, seed, extra)
        assert argv[-4:] == ["--out", out, "--device", "cpu"]  # train.py's flags passed on
        cell = {"f": {"accuracy": 0.9 + seed / 100}, "h": {"accuracy": 0.9 + seed / 100}}
        probe = {mode: cell for mode in ("grid", "topn", "oracle")}
        path = f"{out}/metrics.json"
        write = f"import json; json.dump({{'probe_test': {probe}}}, open('{path}', 'w'))"
        return out, [sys.executable, "-c", write]
    monkeypatch.setattr(reproduce, "command", stand_in)
    reproduce.main(["--seeds", "0", "1", "--jobs", "3", "--device", "cpu"])
    rows = reproduce.table([0, 1]).splitlines()
    assert rows[2] == ("| Regional MNIST, f | 0.9050 +- 0.0071 [0.9551] | 0.9050 +- 0.0071 "
                       "[0.9552] | 0.9050 +- 0.0071 [0.3156] | 0.9050 +- 0.0071 [0.5144] |")
    assert rows[4].endswith("| 0.9050 +- 0.0071 [0.9273] | - |")  # MNIST has no oracle
    monkeypatch.setattr(reproduce.subprocess, "Popen", None)  # all probed: nothing runs again
    reproduce.main(["--seeds", "0", "1"])
    (tmp_path / "runs" / "ours-mnist-s2").mkdir()
    (tmp_path / "runs" / "ours-mnist-s2" / "checkpoint.pt").touch()
    assert command("ours", "mnist", 2, [])[1][-1] == "--resume"  # an interrupted run resumes
