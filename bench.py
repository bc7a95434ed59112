"""Benchmark: ours' exact step against SimCLR's, and both against this machine's peak.

    python bench.py                  # on a GPU where there is one: python bench.py --device cuda

Prints (1) images/s of `train.py --steps 60 --no-probe` runs of ours and simclr at the same
batch size, alternated over rounds so both see the same machine, with the median ratio;
(2) the FLOPs of one training step of each, forward and backward, counted by PyTorch's
FlopCounterMode (its hooks on every matrix multiply and convolution), and the step's measured
rate as a fraction of (3) this machine's float32 and bf16 matrix-multiply peaks, timed in the
same run: the time the step would take with the objective at the float32 peak and the networks
at the peak of their precision (bf16 where the machine has it), over the time it takes; with
the encoder's forward FLOPs layer by layer; (4) crops/s of the one-pass encoder against
encoding every crop on its own; (5) the peak resident memory of a process doing Regional
MNIST steps at --memory-batch.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import config
import train
from channel import Channel, crops_at, grid_offsets
from model import Encoder, resolve_precision
from objective import exact_mi

MEMORY_STEP = """
import resource, sys, torch, bench
bench.training_steps(sys.argv[2], int(sys.argv[1]), repeats=2, device=sys.argv[3])
if sys.argv[3] == "cuda":  # the GPU's peak
    print(torch.cuda.max_memory_allocated() / 2**30)
else:  # VmHWM: this process's own peak; ru_maxrss also counts bench.py's, kept across the fork
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                print(int(line.split()[1]) / 2**20)  # KiB -> GiB
    except OSError:  # no /proc (not Linux)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""


def training_steps(method, batch, canvas=56, repeats=1, device="cpu"):
    """(encoder, channel) after training steps of method on one batch of random canvases, from
    fresh networks."""
    args = config.parse_args(["--method", method, "--batch-size", str(batch)])
    args.precision = resolve_precision(args.precision, torch.device(device))  # as train.main
    torch.manual_seed(0)
    encoder, channel = Encoder().to(device), Channel().to(device)
    opts = [torch.optim.Adam(net.parameters()) for net in (encoder, channel)]
    x = torch.rand(batch, 1, canvas, canvas, device=device)  # (B, 1, C, C)
    grid = grid_offsets(canvas).to(device)  # (K, 2)
    g = torch.Generator(device)
    for _ in range(repeats):
        if method == "ours":
            train.alternating_step(args, encoder, channel, *opts, x, grid, g)
        else:
            train.simclr_step(args, encoder, opts[0], x, grid, g)
    return encoder, channel


def synchronize(device):
    if device == "cuda":  # CUDA runs asynchronously: wait for it before reading a clock
        torch.cuda.synchronize()


def timed(f, repeats=5, device="cpu"):
    """Median seconds of f(), the device synchronized before each clock reading."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        f()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(device, dtype=torch.float32, n=2048):
    """FLOP/s of an n x n matrix multiply in dtype, the machine's practical peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm up
    return 2 * n**3 / timed(lambda: a @ b, repeats=10, device=device)


def step_flops(method, batch, canvas=56):
    """FLOPs per image of one training step at batch size B, forward and backward: (the whole
    step, its objective's part), the objective being ours' exact MI, float32 at any precision."""
    with FlopCounterMode(display=False) as step:
        training_steps(method, batch)
    if method != "ours":
        return step.get_total_flops() / batch, 0.0  # NT-Xent: a (2B, 2B) matrix, negligible
    z = F.normalize(torch.randn(batch, len(grid_offsets(canvas)), 50), dim=-1).requires_grad_()
    logp = torch.randn(z.shape[:2]).log_softmax(1).requires_grad_()  # (B, K)
    with FlopCounterMode(display=False) as objective:  # (a) then (b) of the alternating step
        exact_mi(z, logp.detach(), 5.0).backward()
        exact_mi(z.detach(), logp, 5.0).backward()
    return step.get_total_flops() / batch, objective.get_total_flops() / batch


@torch.no_grad()
def encoder_flops(x):
    """{layer: forward FLOPs} of the encoder on x, per image (backward's attribution to layers
    is not exact in FlopCounterMode, its total is)."""
    with FlopCounterMode(display=False) as counter:
        Encoder()(x)
    return {name.split(".", 1)[1]: sum(ops.values()) / len(x)
            for name, ops in counter.get_flop_counts().items() if name.count(".") == 2}


def images_per_second(method, batch_size, steps, out, device):
    metrics = train.main(["--method", method, "--steps", str(steps), "--batch-size",
                          str(batch_size), "--no-probe", "--log-every", str(steps), "--out", out,
                          "--device", device])
    return metrics["images_per_second"]


@torch.no_grad()
def crops_per_second(canvas, batch, device):
    """(one pass over the canvases, every crop encoded on its own) in crops/s, medians."""
    torch.manual_seed(0)
    encoder = Encoder().to(device)
    x = torch.rand(batch, 1, canvas, canvas, device=device)  # (B, 1, C, C)
    offsets = grid_offsets(canvas)  # (K, 2)
    crops = crops_at(x, offsets.expand(batch, -1, -1)).flatten(0, 1)[:, None]  # (B K, 1, 28, 28)
    n = batch * len(offsets)
    one_pass = n / timed(lambda: encoder(x), device=device)
    return one_pass, n / timed(lambda: encoder(crops), device=device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, help="B of both (default: train.py's on Regional)")
    p.add_argument("--steps", type=int, default=60, help="steps of each timed run")
    p.add_argument("--rounds", type=int, default=3, help="alternations of ours and simclr")
    p.add_argument("--memory-batch", type=int, default=256, help="B of the peak-memory step")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA if any, as train.py")
    a = p.parse_args(argv)
    if a.batch_size is None:  # the default command's B
        a.batch_size = config.parse_args([]).batch_size
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    device = "cuda" if a.device != "cpu" and torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {name}")
    rates = {"ours": [], "simclr": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.rounds):
            for method in rates:
                out = os.path.join(tmp, method)
                rates[method].append(images_per_second(method, a.batch_size, a.steps, out, device))
    peaks = {dtype: matmul_peak(device, getattr(torch, dtype)) for dtype in ("float32", "bfloat16")}
    precision = resolve_precision("auto", torch.device(device))  # of the networks, as train.py
    network_peak = peaks["bfloat16"] if precision == "bf16" else peaks["float32"]
    print("matrix-multiply peak (2048 x 2048, median of 10): " + ", ".join(
        f"{dtype} {peak / 1e9:.1f} GFLOP/s" for dtype, peak in peaks.items()))
    print(f"the networks run in {precision}, the objective in float32")
    for method, values in rates.items():
        rate = statistics.median(values)
        flops, objective = step_flops(method, a.batch_size)
        # seconds per image at the peaks: the objective in float32, the networks in their precision
        ideal = objective / peaks["float32"] + (flops - objective) / network_peak
        print(f"{method:>6}: {rate:7.0f} images/s (median of {len(values)} runs of {a.steps} "
              f"steps at B={a.batch_size}: {', '.join(f'{v:.0f}' for v in values)})")
        print(f"        {flops / 1e6:.1f} MFLOP per image per step, forward and backward, "
              f"{objective / 1e6:.1f} in the objective")
        print(f"        {rate * flops / 1e9:.1f} GFLOP/s; at the peaks the step would take "
              f"{rate * ideal:.0%} of its time")
    ratios = [s / o for s, o in zip(rates["simclr"], rates["ours"])]
    print(f"step cost of ours / simclr: {statistics.median(ratios):.2f}x (median of per-round "
          "ratios)")
    canvas = encoder_flops(torch.zeros(1, 1, 56, 56))  # all 64 crops in one pass
    crops = encoder_flops(torch.zeros(2, 1, 28, 28))  # per crop
    print("encoder forward, MFLOP per image, ours (one canvas) / simclr (two crops): " + ", ".join(
        f"{k} {canvas[k] / 1e6:.1f} / {2 * crops[k] / 1e6:.1f}" for k in canvas))
    one_pass, per_crop = crops_per_second(56, a.batch_size, device)
    print(f"encoder, no grad: one pass {one_pass:.0f} crops/s, per crop {per_crop:.0f} crops/s "
          f"({one_pass / per_crop:.1f}x)")
    where = "the GPU's" if device == "cuda" else "the whole process's"
    for method in ("ours", "simclr"):
        peak_memory = subprocess.run(
            [sys.executable, "-c", MEMORY_STEP, str(a.memory_batch), method, device], check=True,
            capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
        print(f"peak memory of a {method} step at B={a.memory_batch}: "
              f"{float(peak_memory.stdout):.2f} GiB ({where})")


if __name__ == "__main__":
    main()
