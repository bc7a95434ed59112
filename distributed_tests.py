"""Tests of distributed.py: two processes train as one; `pytest test_all.py` runs them."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing

import train
from fixtures import fake_mnist, load

METHODS = {"ours": ["--samples", "0"], "ours-sampled": ["--samples", "4"], "simclr": []}


def worker(rank, world, ports, runs):
    """One process of a torchrun-like launch, at one thread as every process of the test: train.main
    for each run, its process group meeting at the launcher's store on that run's port."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", TORCHELASTIC_USE_AGENT_STORE="True")
    torch.set_num_threads(1)  # two processes on a 2-core machine, and one alike
    for port, argv in zip(ports, runs):
        os.environ["MASTER_PORT"] = str(port)
        train.main(argv)


def launch(world, runs):
    """world processes of worker, as torchrun starts them: the launcher holds each run's store on
    a port the system picked (none is handed on free for another program to take), and every
    process is its client."""
    stores = [dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)
              for _ in runs]
    torch.multiprocessing.spawn(worker, (world, [s.port for s in stores], runs), nprocs=world)


def runs_of(tmp_path, world):
    """train.py argument lists: for each method, 1 step, and 3 steps resumed after 2."""
    runs = []
    for name, flags in METHODS.items():
        common = ["--method", name.split("-")[0], *flags, "--data-dir", str(tmp_path / "mnist"),
                  "--batch-size", "8", "--device", "cpu", "--precision", "float64", "--no-probe",
                  "--log-every", "1"]
        out = str(tmp_path / f"{name}-w{world}")
        runs += [[*common, "--steps", "1", "--out", out + "-1"],
                 [*common, "--steps", "2", "--out", out + "-3"],
                 [*common, "--steps", "3", "--out", out + "-3", "--resume"]]
    return runs


def test_two_processes_give_the_gradients_and_weights_of_one(tmp_path):
    """The math: given the same weights and batch, two processes' summed gradients equal one
    process's; only the order of the sums differs. Every run is float64 (u = 1.1e-16), where the
    order moves a sum of n terms by at most n u times their sizes: n <= (B K)^2 = 262,144
    similarities of size <= beta = 5 gives 1.5e-10, 1e-8 of the largest gradient entry even where
    the MI's near-zero start cancels its terms 70-fold. Adam moves a weight by lr m / (sqrt(v) +
    eps): a gradient changed by a relative r moves it by <= 2 r lr, a change d of a gradient near
    0 by <= lr d / eps = 1e5 d; at float64's d ~ 1e-15 (measured 3e-12 of the largest entry,
    about 1e-14), three steps move a weight by <= 1e-9. Tested: the first step's gradients
    (Adam's first moment after one step, 0.1 g) to 1e-8 of the largest entry, which fails on a
    gather that drops the others' gradient and on a world-size factor missing or doubled
    (checked by hand); the weights after three steps to 1e-9."""
    fake_mnist(tmp_path / "mnist")
    launch(1, runs_of(tmp_path, 1))
    launch(2, runs_of(tmp_path, 2))
    assert json.load(open(tmp_path / "ours-w2-3" / "args.json"))["world_size"] == 2
    for name in METHODS:
        for opt in ("opt_theta", "opt_eta"):
            one = load(tmp_path, f"{name}-w1-1")[opt]["state"]
            two = load(tmp_path, f"{name}-w2-1")[opt]["state"]
            for key in one:
                g1, g2 = one[key]["exp_avg"], two[key]["exp_avg"]
                assert (g2 - g1).abs().max() <= 1e-8 * g1.abs().max(), (name, opt, key)
        one = load(tmp_path, f"{name}-w1-3")
        two = load(tmp_path, f"{name}-w2-3")
        assert one["history"][-1]["step"] == two["history"][-1]["step"] == 3
        for net in ("encoder", "channel"):
            for key, w1 in one[net].items():
                assert (two[net][key] - w1).abs().max() <= 1e-9, (name, net, key)
    with pytest.raises(SystemExit, match="world_size=2, not 1"):  # resumed by another world
        train.main([*runs_of(tmp_path, 2)[-1], "--steps", "4"])
