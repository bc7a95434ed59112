"""Algorithm 1 of Koyama et al. 2021: contrastive learning with a trainable augmentation channel.

    python train.py --method ours     # maximize the exact MI of equation (2) over the crop grid
    python train.py --method simclr   # the baseline: NT-Xent on two uniformly drawn grid crops

ours alternates (a) an encoder step on exact_mi with the channel held fixed and (b) a channel
step on exact_mi + lambda H(T|X) with the encoder held fixed. Both steps are evaluated at the
same point (z before the encoder moves), so one backward pass of -(MI + lambda H) gives both
gradients exactly: the parameter sets are disjoint and H does not depend on the encoder.
Shapes: B batch, C canvas side, K crops, d embedding.
"""
import argparse
import io
import json
import os
import signal
import sys
import time

import torch

import probe
from channel import Channel, check_canvas, crops_at, entropy, grid_offsets
from data import load_canvases, write_atomic
from model import Encoder
from objective import alignment, exact_mi, nt_xent, uniformity

SAME_CONFIG = ("method", "dataset", "canvas", "batch_size", "beta", "entropy_weight", "lr", "dim", "seed")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line naming the problem, no usage dump, no traceback
        sys.exit(f"{self.prog}: error: {message}")


def parse_args(argv):
    p = Parser(prog="train.py", description=__doc__.split("\n")[0])
    p.add_argument("--method", choices=["ours", "simclr"], default="ours", help="ours: exact MI with a trained P(T|X); simclr: NT-Xent, uniform T")
    p.add_argument("--dataset", choices=["regional", "mnist"], default="regional", help="Regional MNIST (digit anywhere) or MNIST (digit centred)")
    p.add_argument("--canvas", type=int, help="canvas side C in px (default 56 regional, 36 mnist)")
    p.add_argument("--data-dir", default="data", help="folder of the MNIST IDX files (downloaded there if missing)")
    p.add_argument("--steps", type=int, help="iterations of Algorithm 1 (default 2000 regional, 1000 mnist; no cap with --minutes)")
    p.add_argument("--batch-size", type=int, default=64, help="B, images per step")
    p.add_argument("--beta", type=float, default=5.0, help="beta, inverse temperature of P(Z|T(X)) (SimCLR's 1/tau)")
    p.add_argument("--entropy-weight", type=float, default=0.5, help="lambda, weight of the bonus H(T|X) in the channel step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of theta (encoder) and eta (channel)")
    p.add_argument("--dim", type=int, default=50, help="d, dimension of the representation z = f(h)")
    p.add_argument("--seed", type=int, default=0, help="seeds the canvases, the weights and the batches")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")
    p.add_argument("--out", help="run folder (default runs/METHOD-DATASET-sSEED)")
    p.add_argument("--minutes", type=float, help="wall-clock budget of the training loop (--steps stays a cap)")
    p.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe after training")
    args = p.parse_args(argv)
    args.steps = (10**9 if args.minutes else {"regional": 2000, "mnist": 1000}[args.dataset]) if args.steps is None else args.steps
    args.canvas = args.canvas or {"regional": 56, "mnist": 36}[args.dataset]
    args.out = args.out or f"runs/{args.method}-{args.dataset}-s{args.seed}"
    args.data_dir = os.path.abspath(args.data_dir)  # probe.py reads it back from the checkpoint, from any folder
    for name in ("steps", "batch_size", "beta", "lr", "dim", "save_every", "minutes"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.entropy_weight < 0:
        p.error(f"--entropy-weight must be non-negative, got {args.entropy_weight}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    try:
        check_canvas(args.canvas)
    except ValueError as e:
        p.error(f"--canvas: {e}")
    return args


def save(path, obj):
    """torch.save through a temporary file and a rename: a kill leaves the previous checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, lambda fh: fh.write(buffer.getvalue()))


def load_checkpoint(args):
    """The checkpoint in --out, refused in one line if unreadable or of another configuration."""
    path = os.path.join(args.out, "checkpoint.pt")
    if not os.path.exists(path):
        sys.exit(f"train.py: error: --resume: no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, or one that is not a plain checkpoint (weights_only refuses code)
        sys.exit(f"train.py: error: --resume: cannot read {path}: {str(e).splitlines()[0]}")
    for name in SAME_CONFIG:
        if ckpt["args"].get(name) != getattr(args, name):
            sys.exit(f"train.py: error: --resume: the checkpoint in {args.out} has {name}={ckpt['args'].get(name)!r}, "
                     f"not {getattr(args, name)!r}")
    return ckpt


def step_loss(args, encoder, channel, xb, grid, g):
    """The loss of one step and what the progress bar shows."""
    if args.method == "ours":
        logp = channel(xb)  # (B, K)
        mi, H = exact_mi(encoder(xb)[1], logp, args.beta), entropy(logp)
        return -(mi + args.entropy_weight * H), {"MI": mi.item(), "H": H.item()}
    views = grid[torch.randint(len(grid), (2, len(xb)), generator=g, device=g.device)]  # (2, B, 2)
    z1, z2 = (encoder(crops_at(xb, v))[1][:, 0] for v in views)  # (B, d) each
    loss = nt_xent(z1, z2, args.beta)
    return loss, {"loss": loss.item()}


@torch.no_grad()
def diagnostics(args, encoder, channel, xb):
    """MI, H(T|X), alignment and uniformity of a fixed batch, two crops drawn from P(T|X)."""
    logp, z = channel(xb), encoder(xb)[1]  # (B, K), (B, K, d)
    g = torch.Generator(xb.device).manual_seed(args.seed)
    k = torch.multinomial(logp.exp(), 2, replacement=True, generator=g)  # (B, 2)
    z1, z2 = (z[torch.arange(len(z)), k[:, i]] for i in (0, 1))  # (B, d) each
    return {"mi": exact_mi(z, logp, args.beta).item(), "entropy": entropy(logp).item(),
            "alignment": alignment(z1, z2).item(), "uniformity": uniformity(z1).item()}


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    try:  # bad data is refused before anything is written
        x, _, _, source = load_canvases(args.data_dir, "train", args.dataset, args.canvas, args.seed)
    except ValueError as e:
        sys.exit(f"train.py: error: {e}")
    ckpt = load_checkpoint(args) if args.resume else None
    torch.manual_seed(args.seed)
    x, grid = x.to(device), grid_offsets(args.canvas).to(device)  # (N, 1, C, C) uint8, (K, 2)
    encoder, channel = Encoder(args.dim).to(device), Channel().to(device)
    opt_h = torch.optim.Adam(encoder.parameters(), lr=args.lr)  # theta
    opt_eta = torch.optim.Adam(channel.parameters(), lr=args.lr)  # eta
    g = torch.Generator(device).manual_seed(args.seed)  # batches and simclr's views
    start, history = 0, []
    if ckpt and ckpt["device"] != device.type:  # the CPU and CUDA generators keep different states
        sys.exit(f"train.py: error: --resume: the checkpoint was written on {ckpt['device']}, this run is on {device.type}")
    if ckpt:
        for obj, key in ((encoder, "encoder"), (channel, "channel"), (opt_h, "opt_h"), (opt_eta, "opt_eta")):
            obj.load_state_dict(ckpt[key])
        g.set_state(ckpt["generator"])
        start, history = ckpt["step"], ckpt["history"]
    os.makedirs(args.out, exist_ok=True)
    write_atomic(os.path.join(args.out, "args.json"), lambda fh: fh.write(json.dumps(vars(args), indent=2).encode()))
    print(f"{args.method} on {args.dataset} ({source}, {len(x)} canvases {args.canvas}x{args.canvas}, "
          f"K={len(grid)} crops) on {device}: maximize "
          + ("exact MI + lambda H(T|X)" if args.method == "ours" else "-NT-Xent"), file=sys.stderr)

    def checkpoint(step):
        if not all(w.isfinite().all() for w in [*encoder.parameters(), *channel.parameters()]):
            sys.exit(f"\ntrain.py: error: step {step}: the weights are not finite; "
                     f"the last good checkpoint stays in {args.out}")
        save(os.path.join(args.out, "checkpoint.pt"), {
            "encoder": encoder.state_dict(), "channel": channel.state_dict(), "opt_h": opt_h.state_dict(),
            "opt_eta": opt_eta.state_dict(), "generator": g.get_state(), "step": step, "history": history, "device": device.type,
            "args": vars(args)})

    interrupted = []  # Ctrl-C ends the run at the next step boundary, with a checkpoint
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    t0, step, budget = time.perf_counter(), start, 60 * (args.minutes or float("inf"))
    try:
        while step < args.steps and time.perf_counter() - t0 < budget:
            xb = x[torch.randint(len(x), (args.batch_size,), generator=g, device=device)].float() / 255  # (B, 1, C, C)
            loss, shown = step_loss(args, encoder, channel, xb, grid, g)
            if not torch.isfinite(loss):
                sys.exit(f"\ntrain.py: error: step {step}: the objective is {loss.item()}; "
                         f"the last good checkpoint stays in {args.out}")
            for opt in (opt_h, opt_eta):
                opt.zero_grad(set_to_none=True)
            loss.backward()
            opt_h.step()
            if args.method == "ours":
                opt_eta.step()
            history.append(shown)
            step, elapsed = step + 1, time.perf_counter() - t0
            bar = "#" * int(30 * max(step / args.steps, elapsed / budget))
            print(f"\r[{bar:.<30}] step {step} {elapsed:.0f}s " + " ".join(f"{k} {v:.3f}" for k, v in shown.items())
                  + f" {(step - start) * args.batch_size / elapsed:.0f} img/s", end="", file=sys.stderr, flush=True)
            if interrupted:
                checkpoint(step)
                sys.exit(f"\ninterrupted: checkpoint of step {step} saved in {args.out}; continue with --resume")
            if step % args.save_every == 0:
                checkpoint(step)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    seconds = time.perf_counter() - t0
    print(file=sys.stderr)
    checkpoint(step)
    metrics = {"data_source": source, "steps": step, "train_seconds": seconds,
               "images_per_second": (step - start) * args.batch_size / seconds, "device": str(device),
               **diagnostics(args, encoder, channel, x[:args.batch_size].float() / 255)}
    probe.save_json(os.path.join(args.out, "metrics.json"), metrics)
    print(json.dumps(metrics), file=sys.stderr)
    if not args.no_probe:
        probe.main([args.out])
    return metrics


if __name__ == "__main__":
    main()
