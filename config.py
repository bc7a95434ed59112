"""train.py's command line: every flag with its default, the defaults of each dataset, and a
one-line refusal of any value no run can use, before anything is written.
"""
import argparse
import math
import os
import sys

import torch

from channel import check_canvas, grid_offsets
from data import check_memory

# (steps, B, C, Adam rate) of each --method and --dataset, chosen on validation (NOTES.md): ours'
# f and h still rise at 12,000 steps on Regional MNIST; on MNIST its f falls with training at
# 1e-3 (the codes learn to tell images apart, not classes) and holds near h at 5e-5, SimCLR's
# at 1e-4; SimCLR's best of B 32, 64, 128 for 3,000 to 12,000 steps is B 128 for 6,000
DEFAULTS = {("ours", "regional"): (12000, 32, 56, 1e-3),
            ("simclr", "regional"): (6000, 128, 56, 1e-3),
            ("ours", "mnist"): (1000, 64, 36, 5e-5),
            ("simclr", "mnist"): (1000, 64, 36, 1e-4)}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line naming the problem, no usage dump, no traceback
        sys.exit(f"{self.prog}: error: {message}")


def parse_args(argv):
    p = Parser(prog="train.py", description="Algorithm 1 of Koyama et al. 2021.")
    add = p.add_argument
    add("--method", choices=["ours", "simclr"], default="ours", help="ours: exact MI, learned T")
    add("--dataset", choices=["regional", "mnist"], default="regional", help="Regional or MNIST")
    add("--canvas", type=int, help="canvas side C in px (default 56 regional, 36 mnist)")
    add("--data-dir", default="data", help="folder of the MNIST IDX files (fetched if missing)")
    add("--steps", type=int, help="iterations (default: config.py's DEFAULTS)")
    add("--batch-size", type=int, help="B, images per step (default: config.py's DEFAULTS)")
    add("--beta", type=float, default=5.0, help="beta, inverse temperature (SimCLR's 1/tau)")
    add("--entropy-weight", type=float, default=0.5, help="lambda, weight of H(T|X)")
    add("--lr", type=float, help="Adam rate of theta and eta (default: config.py's DEFAULTS)")
    add("--channel-warmup", type=int, default=250, help="steps of eta's rate rising to --lr")
    add("--schedule", choices=["constant", "cosine"], default="constant",
        help="both rates: --lr throughout, or a cosine from --lr to 0 over --steps")
    add("--samples", type=int, default=0,
        help="m >= 2 of the poster's Algorithm 1: crops drawn per image (0: the exact sum over K)")
    add("--weights", choices=["self-normalized", "unnormalized"], default="self-normalized",
        help="with --samples, the channel phase's weights of its uniform draws (sampling.py)")
    add("--objective", choices=["mi", "bound"], default="mi",
        help="ours maximizes (2), or its Jensen bound (the ablation of the exact MI)")
    add("--channel", choices=["learned", "uniform"], default="learned",
        help="P(T|X) trained by Algorithm 1's (b), or kept uniform (the ablation of the channel)")
    add("--dim", type=int, default=50, help="d, dimension of the representation z = f(h)")
    add("--seed", type=int, default=0, help="seeds the canvases, the weights and the batches")
    add("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA if any")
    add("--precision", choices=["auto", "float32", "bf16", "float64"], default="auto",
        help="of the networks (the objective: float32, or float64 with float64, for checks of "
        "numerics); auto: bf16 where the device has it")
    add("--out", help="run folder (default runs/METHOD-DATASET-sSEED)")
    add("--minutes", type=float, help="wall-clock budget of the training loop")
    add("--save-every", type=int, default=100, help="steps between checkpoints")
    add("--snapshot-every", type=int,
        help="steps between copies of the networks kept in snapshots/ (compare.py collapse)")
    add("--log-every", type=int, default=10, help="steps between progress lines and checks")
    add("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    add("--no-probe", action="store_true", help="skip the linear probe after training")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p, args):
    """Refuse, in one line, numbers no run can use; then fill in the defaults of --dataset."""
    for name in ("steps", "batch_size", "canvas", "beta", "lr", "dim", "save_every", "log_every",
                 "minutes", "entropy_weight", "channel_warmup", "samples", "snapshot_every"):
        value = getattr(args, name)
        flag = "--" + name.replace("_", "-")
        zero_allowed = name in ("entropy_weight", "samples", "steps")  # 0 steps: untrained
        if value is None:  # not given: the default of --dataset (below), or none
            continue
        if not math.isfinite(value):
            p.error(f"{flag} must be finite, got {value}")
        if zero_allowed and value < 0:
            p.error(f"{flag} must be non-negative, got {value}")
        if not zero_allowed and value <= 0:
            p.error(f"{flag} must be positive, got {value}")
    if args.schedule == "cosine" and args.minutes:
        p.error("--schedule cosine decays over --steps: it cannot follow a --minutes budget")
    ours_only = {"--samples": args.samples, "--objective": args.objective != "mi",
                 "--channel": args.channel != "learned"}
    for flag, given in ours_only.items():
        if given and args.method != "ours":
            p.error(f"{flag}: SimCLR has two uniform views and NT-Xent; the flag is for ours")
    if args.samples == 1:  # sampling.mi_of_draws
        p.error("--samples 1: a draw's numerator needs another draw of its image; use 2 or more")
    if args.objective == "bound" and args.samples:
        p.error("--objective bound: the bound is taken on the exact sum, without --samples")
    if args.weights != "self-normalized" and (not args.samples or args.channel == "uniform"):
        p.error("--weights: only the channel phase of --samples weighs its draws")
    steps, B, C, lr = DEFAULTS[args.method, args.dataset]
    if args.minutes:
        steps = 10**9  # the --minutes budget ends the run
    args.steps = steps if args.steps is None else args.steps
    args.batch_size = args.batch_size or B
    args.canvas = args.canvas or C
    args.lr = args.lr or lr
    ablations = {"-bound": args.objective == "bound", "-uniform": args.channel == "uniform",
                 f"-m{args.samples}": args.samples,
                 "-unnormalized": args.weights == "unnormalized"}
    name = args.method + "".join(part for part, given in ablations.items() if given)
    args.out = args.out or f"runs/{name}-{args.dataset}-s{args.seed}"
    args.data_dir = os.path.abspath(args.data_dir)  # probe.py reads it back from any folder
    args.world_size = int(os.environ.get("WORLD_SIZE", 1))  # processes, set by torchrun
    if args.batch_size % args.world_size:
        p.error(f"--batch-size {args.batch_size} is not a multiple of the {args.world_size} "
                "processes: each takes an equal share of every batch")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    try:
        check_canvas(args.canvas)
        check_memory(args.canvas, args.batch_size, args.device)
    except ValueError as e:
        p.error(f"--canvas {args.canvas}: {e}")
    K = len(grid_offsets(args.canvas))
    if args.samples > K:  # (b) draws without replacement
        p.error(f"--samples {args.samples} exceeds the {K} crops of the grid on --canvas "
                f"{args.canvas}")


def rates(args, step):
    """(theta's, eta's) Adam rate at step: --lr times the --schedule's factor (1, or a cosine
    from 1 to 0 over --steps); eta's also rises linearly over its first --channel-warmup steps."""
    decay = 1.0
    if args.schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * step / args.steps))
    rate = args.lr * decay
    return rate, rate * min(1.0, (step + 1) / args.channel_warmup)


def describe(args):
    """What a run maximizes, in words, for its first line."""
    if args.method == "simclr":
        return "-NT-Xent"
    what = "the Jensen bound of (2)" if args.objective == "bound" else "the exact MI of (2)"
    what += " + lambda H(T|X)" if args.channel == "learned" else ", P(T|X) kept uniform"
    if args.samples:
        what += f", estimated from {args.samples} crops drawn per image ({args.weights} in (b))"
    return what
