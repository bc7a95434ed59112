"""Benchmark: the exact channel against SimCLR, side by side in one run, on this machine.

    python bench.py --data-dir ../shared/mnist [--minutes 10]

Prints (1) images/s of `train.py --steps 60 --no-probe` runs of ours and simclr at the same
batch size, alternated over rounds so both see the same machine, with the median ratio;
(2) the forward multiply-adds per image of both steps, counted layer by layer, which bound
the ratio from below; (3) crops/s of the one-pass encoder against encoding every crop on its
own; (4) the peak resident memory of a process doing Regional MNIST steps at --memory-batch;
(5) with --minutes M, the probe accuracy `train.py --minutes M` reaches.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import train
from channel import crops_at, grid_offsets
from model import Encoder

MEMORY_STEP = """
import resource, sys, torch, train
from channel import Channel, grid_offsets
from model import Encoder
args = train.parse_args(["--method", sys.argv[2], "--batch-size", sys.argv[1]])
x, grid, g = torch.rand(args.batch_size, 1, args.canvas, args.canvas), grid_offsets(args.canvas), torch.Generator()
for _ in range(2):
    train.step_loss(args, Encoder(), Channel(), x, grid, g)[0].backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)  # KiB -> GiB
"""


def images_per_second(method, data_dir, batch_size, steps, out):
    metrics = train.main(["--method", method, "--data-dir", data_dir, "--steps", str(steps), "--batch-size",
                          str(batch_size), "--no-probe", "--out", out])
    return metrics["images_per_second"]


@torch.no_grad()
def multiply_adds(canvas=56, batch=64, dim=50):
    """Forward multiply-adds per image of a step: {method: (encoder's per layer, objective)}.

    ours encodes one canvas (all K crops in one pass) and compares all N = B K codes with each
    other (the (N, N) matrix of the denominator and the (K, K) numerator of each image); simclr
    encodes two 28x28 crops and compares 2B codes. Each Conv2d or Linear output element costs
    one dot product with a row of its weight.
    """
    encoder, counts = Encoder(dim), []
    for m in encoder.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(lambda m, _, out: counts.append(out.numel() * m.weight[0].numel()))

    def encoder_cost(x):
        counts.clear()
        encoder(x)
        return list(counts)
    K = len(grid_offsets(canvas))
    return {"ours": (encoder_cost(torch.zeros(1, 1, canvas, canvas)), (batch * K + K) * K * dim),
            "simclr": (encoder_cost(torch.zeros(2, 1, 28, 28)), 4 * batch * dim)}


@torch.no_grad()
def crops_per_second(canvas, batch, repeats=5):
    """(one pass over the canvases, every crop encoded on its own) in crops/s, medians."""
    torch.manual_seed(0)
    encoder, x, offsets = Encoder(), torch.rand(batch, 1, canvas, canvas), grid_offsets(canvas)
    crops = torch.cat([crops_at(x, o.expand(batch, 2)) for o in offsets])  # (B * K, 1, 28, 28)

    def rate(f):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return batch * len(offsets) / statistics.median(times)
    return rate(lambda: encoder(x)), rate(lambda: encoder(crops))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="data", help="folder of the MNIST IDX files")
    p.add_argument("--batch-size", type=int, default=64, help="B of both methods")
    p.add_argument("--steps", type=int, default=60, help="steps of each timed run")
    p.add_argument("--rounds", type=int, default=3, help="alternations of ours and simclr")
    p.add_argument("--memory-batch", type=int, default=256, help="B of the peak-memory step")
    p.add_argument("--minutes", type=float, default=0, help="also train ours for M minutes and probe it")
    a = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}")
    rates = {"ours": [], "simclr": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for method in rates:
                rates[method].append(images_per_second(method, a.data_dir, a.batch_size, a.steps,
                                                       os.path.join(tmp, method)))
    ratios = [s / o for s, o in zip(rates["simclr"], rates["ours"])]
    for method, values in rates.items():
        print(f"{method:>6}: {statistics.median(values):7.0f} images/s (median of {len(values)} runs "
              f"of {a.steps} steps at B={a.batch_size}: {', '.join(f'{v:.0f}' for v in values)})")
    print(f"step cost of ours / simclr: {statistics.median(ratios):.2f}x (median of per-round ratios)")
    (ours, ours_obj), (simclr, simclr_obj) = multiply_adds(56, a.batch_size).values()
    for method, enc, obj in (("ours", ours, ours_obj), ("simclr", simclr, simclr_obj)):
        print(f"{method:>6}: {sum(enc) / 1e6:5.1f} M multiply-adds per image in the encoder, {obj / 1e6:5.2f} M in the objective (forward)")
    print(f"arithmetic ratio ours / simclr: {(sum(ours) + ours_obj) / (sum(simclr) + simclr_obj):.2f}x; the encoder alone "
          f"{sum(ours) / sum(simclr):.2f}x, by layer " + ", ".join(f"{o / s:.2f}x" for o, s in zip(ours, simclr)))
    one_pass, per_crop = crops_per_second(56, a.batch_size)
    print(f"encoder on the CPU, no grad: one pass {one_pass:.0f} crops/s, per crop {per_crop:.0f} crops/s ({one_pass / per_crop:.1f}x)")
    for method in ("ours", "simclr"):
        peak = subprocess.run([sys.executable, "-c", MEMORY_STEP, str(a.memory_batch), method], check=True,
                              capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
        print(f"peak memory of a {method} step at B={a.memory_batch}: {float(peak.stdout):.2f} GiB (whole process)")
    if a.minutes:
        with tempfile.TemporaryDirectory() as tmp:
            train.main(["--method", "ours", "--data-dir", a.data_dir, "--minutes", str(a.minutes), "--out", tmp])
            with open(os.path.join(tmp, "metrics.json")) as fh:
                m = json.load(fh)
        print(f"ours in {a.minutes:g} min: {m['steps']} steps, probe grid f {m['probe']['grid']['f']:.4f} "
              f"h {m['probe']['grid']['h']:.4f}")


if __name__ == "__main__":
    main()
