"""Algorithm 1 of Koyama et al. 2021: contrastive learning with a trainable augmentation channel.

    python train.py --method ours     # maximize the exact MI of equation (2) over the crop grid
    python train.py --method simclr   # the baseline: NT-Xent on two uniformly drawn grid crops

Each iteration of ours is Algorithm 1's pair of alternating updates (alternating_step), exact
over the crop grid, or with `--samples M` as the poster samples it: M crops per image, not all K.
Shapes: B batch, C canvas side, K crops, d embedding.
"""
import argparse
import math
import os
import signal
import sys
import time

import torch

import probe
from channel import check_canvas, crops_at, entropy, grid_offsets
from checkpoint import fresh_or_resumed, save_json, save_run, stop_if_not_finite
from data import check_memory, load_canvases
from model import autocast, resolve_precision
from objective import exact_mi, nt_xent
from sampling import draw_from_channel, draw_uniform, views


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line naming the problem, no usage dump, no traceback
        sys.exit(f"{self.prog}: error: {message}")


def parse_args(argv):
    p = Parser(prog="train.py", description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--method", choices=["ours", "simclr"], default="ours", help="ours: exact MI, learned T")
    add("--dataset", choices=["regional", "mnist"], default="regional", help="Regional or MNIST")
    add("--canvas", type=int, help="canvas side C in px (default 56 regional, 36 mnist)")
    add("--data-dir", default="data", help="folder of the MNIST IDX files (fetched if missing)")
    add("--steps", type=int, help="iterations (default 3000 regional, 1000 mnist)")
    add("--batch-size", type=int, help="B, images per step (default 32 regional, 64 mnist)")
    add("--beta", type=float, default=5.0, help="beta, inverse temperature (SimCLR's 1/tau)")
    add("--entropy-weight", type=float, default=0.5, help="lambda, weight of H(T|X)")
    add("--lr", type=float, default=1e-3, help="Adam learning rate of theta and eta")
    add("--channel-warmup", type=int, default=250, help="steps of eta's rate rising to --lr")
    add("--samples", type=int, default=0,
        help="m of the poster's Algorithm 1: crops drawn per image (0: the exact sum over all K)")
    add("--dim", type=int, default=50, help="d, dimension of the representation z = f(h)")
    add("--seed", type=int, default=0, help="seeds the canvases, the weights and the batches")
    add("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA if any")
    add("--precision", choices=["auto", "float32", "bf16"], default="auto",
        help="of the networks (the objective is float32); auto: bf16 where the device has it")
    add("--out", help="run folder (default runs/METHOD-DATASET-sSEED)")
    add("--minutes", type=float, help="wall-clock budget of the training loop")
    add("--save-every", type=int, default=100, help="steps between checkpoints")
    add("--log-every", type=int, default=10, help="steps between progress lines and checks")
    add("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    add("--no-probe", action="store_true", help="skip the linear probe after training")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p, args):
    """Refuse, in one line, numbers no run can use; then fill in the defaults of --dataset."""
    for name in ("steps", "batch_size", "canvas", "beta", "lr", "dim", "save_every", "log_every",
                 "minutes", "entropy_weight", "channel_warmup", "samples"):
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        zero_allowed = name in ("entropy_weight", "samples")
        if value is not None and not math.isfinite(value):
            p.error(f"{flag} must be finite, got {value}")
        if value is not None and (value < 0 or value == 0 and not zero_allowed):
            p.error(f"{flag} must be {'non-negative' if zero_allowed else 'positive'}, got {value}")
    if args.samples and args.method != "ours":
        p.error("--samples: SimCLR draws its two views already; the flag is for --method ours")
    # steps, B, C by dataset; Regional's B 32 for 3,000 steps was chosen on validation (NOTES.md)
    steps, B, C = {"regional": (3000, 32, 56), "mnist": (1000, 64, 36)}[args.dataset]
    args.steps = args.steps or (10**9 if args.minutes else steps)  # 0 refused above, as B and C
    args.batch_size, args.canvas = args.batch_size or B, args.canvas or C
    name = f"{args.method}-m{args.samples}" if args.samples else args.method
    args.out = args.out or f"runs/{name}-{args.dataset}-s{args.seed}"
    args.data_dir = os.path.abspath(args.data_dir)  # probe.py reads it back from any folder
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    try:
        check_canvas(args.canvas)
        check_memory(args.canvas, args.batch_size, args.device)
    except ValueError as e:
        p.error(f"--canvas {args.canvas}: {e}")
    if args.samples > len(grid_offsets(args.canvas)):  # (b) draws without replacement
        p.error(f"--samples {args.samples} exceeds the {len(grid_offsets(args.canvas))} crops "
                f"of the grid on --canvas {args.canvas}")


def alternating_step(args, encoder, channel, opt_theta, opt_eta, xb, grid, g):
    """Algorithm 1: (a) encoder step with P(T|X) fixed, (b) channel step with the new encoder.

    Both evaluate (2) with exact_mi on views z weighted by log w: all K crops weighted by P(T|X)
    (exact), or m = --samples drawn per image, as the poster samples them (sampling.py)."""
    m = args.samples
    with autocast(xb.device, args.precision):
        logp = channel(xb)  # (B, K); eta does not move in (a), so (b) reuses this forward pass
        c, logw = draw_from_channel(logp.detach(), m, g) if m else (None, logp.detach())  # (B, m|K)
        z = views(encoder, xb, grid, c)  # (B, m or K, d)
    mi = exact_mi(z, logw, args.beta)
    opt_theta.zero_grad(set_to_none=True)
    (-mi).backward()
    opt_theta.step()  # (a)
    c, logw = draw_uniform(logp, m, g) if m else (None, logp)  # logw differentiable in eta
    with torch.no_grad(), autocast(xb.device, args.precision):
        z = views(encoder, xb, grid, c)  # codes of the updated encoder, no gradient into them
    H = entropy(logp)  # exact over the K logits, for both estimators
    opt_eta.zero_grad(set_to_none=True)
    (-(exact_mi(z, logw, args.beta) + args.entropy_weight * H)).backward()
    opt_eta.step()  # (b)
    return {"MI": mi.detach(), "H": H.detach()}


def simclr_step(args, encoder, opt_theta, xb, grid, g):
    """NT-Xent on two crops drawn uniformly from the grid for each canvas."""
    t1, t2 = grid[torch.randint(len(grid), (2, len(xb)), generator=g, device=g.device)]  # (B, 2)
    with autocast(xb.device, args.precision):
        z1 = encoder(crops_at(xb, t1[:, None]))[1][:, 0]  # (B, d)
        z2 = encoder(crops_at(xb, t2[:, None]))[1][:, 0]  # (B, d)
    loss = nt_xent(z1, z2, args.beta)
    opt_theta.zero_grad(set_to_none=True)
    loss.backward()
    opt_theta.step()
    return {"loss": loss.detach()}


def setup(args, device):
    """The train canvases, the crop grid, and the networks, optimizers and generator."""
    try:  # bad data is refused before anything is written
        x = load_canvases(args.data_dir, "train", args.dataset, args.canvas, args.seed)[0]
    except ValueError as e:
        sys.exit(f"train.py: error: {e}")
    state, g, step, history = fresh_or_resumed(args, device)
    os.makedirs(args.out, exist_ok=True)
    save_json(os.path.join(args.out, "args.json"), vars(args))
    objective = "exact MI + lambda H(T|X)" if args.method == "ours" else "-NT-Xent"
    if args.samples:
        objective += f", (2) estimated from {args.samples} crops drawn per image"
    print(f"{args.method} on {args.dataset} ({len(x)} canvases of side {args.canvas}) "
          f"on {device}, {args.precision} networks: maximize {objective}", file=sys.stderr)
    x, grid = x.to(device), grid_offsets(args.canvas).to(device)  # (N, 1, C, C) uint8, (K, 2)
    return x, grid, state, g, step, history


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    args.precision = resolve_precision(args.precision, device)  # before the resume check
    x, grid, state, g, start, history = setup(args, device)
    encoder, channel, opt_theta, opt_eta = state.values()
    interrupted = []  # Ctrl-C ends the run at the next step boundary, with a checkpoint
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    t0, step, budget = time.perf_counter(), start, 60 * (args.minutes or float("inf"))
    try:
        while step < args.steps and time.perf_counter() - t0 < budget:
            idx = torch.randint(len(x), (args.batch_size,), generator=g, device=device)  # (B,)
            xb = x[idx].float() / 255  # (B, 1, C, C)
            if args.method == "ours":
                opt_eta.param_groups[0]["lr"] = args.lr * min(1.0, (step + 1) / args.channel_warmup)
                shown = alternating_step(args, encoder, channel, opt_theta, opt_eta, xb, grid, g)
            else:
                shown = simclr_step(args, encoder, opt_theta, xb, grid, g)
            step += 1
            if step % args.log_every == 0 or step == args.steps:  # the loop's only host syncs
                stop_if_not_finite(step - 1, shown.values(), args.out, "objective is")
                shown = {k: v.item() for k, v in shown.items()}
                history.append({"step": step, **shown})
                elapsed = time.perf_counter() - t0
                bar = "#" * int(30 * max(step / args.steps, elapsed / budget))
                values = " ".join(f"{k} {v:.3f}" for k, v in shown.items())
                print(f"\r[{bar:.<30}] step {step} {values} {elapsed:.0f}s "
                      f"{(step - start) * args.batch_size / elapsed:.0f} img/s",
                      end="", file=sys.stderr, flush=True)
            if interrupted:
                save_run(args, state, g, step, history)
                sys.exit(f"\ninterrupted: checkpoint of step {step} saved in {args.out}; "
                         "continue with --resume")
            if step % args.save_every == 0:
                save_run(args, state, g, step, history)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    seconds = time.perf_counter() - t0
    save_run(args, state, g, step, history)
    metrics = {"steps": step, "train_seconds": seconds, "device": device.type,
               "images_per_second": (step - start) * args.batch_size / seconds}
    save_json(os.path.join(args.out, "metrics.json"), metrics)
    print(f"\n{metrics}", file=sys.stderr)
    if not args.no_probe:
        probe.main([args.out])
    return metrics


if __name__ == "__main__":
    main()
