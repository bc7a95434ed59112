"""A run's state and folder: the networks, optimizers and generator, fresh or resumed;
args.json, checkpoint.pt, metrics.json.

A checkpoint holds everything the next step depends on (both networks, both Adam states,
the generator of the batches and the crops drawn, the step and the history), so a resumed run
continues bit for bit. Every file is written to a temporary file and renamed: a kill leaves the
previous one.
"""
import argparse
import json
import os
import sys

import torch

import distributed
from channel import Channel
from data import write_atomic
from model import DTYPES, Encoder

SAME_CONFIG = ("method", "dataset", "canvas", "batch_size", "beta", "entropy_weight", "lr", "dim",
               "seed", "precision", "channel_warmup", "samples", "world_size", "schedule",
               "objective", "channel", "weights")


def save_json(path, obj):
    write_atomic(path, lambda fh: fh.write(json.dumps(obj, indent=2).encode()))


def save_checkpoint(path, state, **extra):
    """state: {name: object with state_dict()}; extra: plain values (step, history, ...)."""
    ckpt = {name: obj.state_dict() for name, obj in state.items()}
    ckpt.update(extra)
    write_atomic(path, lambda fh: torch.save(ckpt, fh))


def save_run(args, state, g, step, history):
    """checkpoint.pt of train.py's state at step, refused if a weight is not finite; written by
    the first process alone (every process holds the same weights)."""
    weights = [*state["encoder"].parameters(), *state["channel"].parameters()]
    stop_if_not_finite(step, weights, args.out, "weights are")
    if distributed.rank() == 0:
        save_checkpoint(os.path.join(args.out, "checkpoint.pt"), state, generator=g.get_state(),
                        step=step, history=history, device=g.device.type, args=vars(args))


def save_snapshot(args, state, step, history):
    """snapshots/STEP.pt: the networks at step, for figures over training (compare.py)."""
    if distributed.rank() == 0:
        os.makedirs(os.path.join(args.out, "snapshots"), exist_ok=True)
        networks = {"encoder": state["encoder"], "channel": state["channel"]}
        save_checkpoint(os.path.join(args.out, "snapshots", f"{step}.pt"), networks, step=step,
                        history=history, args=vars(args))


def stop_if_not_finite(step, values, out, what):
    """Exit in one line if a value is NaN or infinite, before it reaches a checkpoint."""
    for v in values:
        if not torch.isfinite(v).all():
            sys.exit(f"\ntrain.py: error: step {step}: the {what} not finite; "
                     f"the last good checkpoint stays in {out}")


def load_checkpoint(args, device):
    """The checkpoint in --out, refused in one line if unreadable or of another configuration."""
    path = os.path.join(args.out, "checkpoint.pt")
    if not os.path.exists(path):
        sys.exit(f"train.py: error: --resume: no checkpoint at {path}")
    try:  # weights_only refuses pickled code
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, or one that is not a plain checkpoint
        sys.exit(f"train.py: error: --resume: cannot read {path}: {str(e).splitlines()[0]}")
    # a checkpoint may lack these flags: its run ran with these values
    absent = {"samples": 0, "world_size": 1, "schedule": "constant", "objective": "mi",
              "channel": "learned", "weights": "self-normalized"}
    saved = {**absent, **ckpt["args"], "device": ckpt["device"]}
    wanted = {**vars(args), "device": device.type}  # CPU and CUDA generators differ in state
    same = [*SAME_CONFIG, "device"]
    if args.schedule == "cosine":  # its rates depend on the run's length too
        same.append("steps")
    for name in same:
        if saved.get(name) != wanted[name]:
            sys.exit(f"train.py: error: --resume: the checkpoint in {args.out} has "
                     f"{name}={saved.get(name)!r}, not {wanted[name]!r}")
    return ckpt


def fresh_or_resumed(args, device):
    """(state, g, step, history): the networks with their Adam optimizers, and the generator of
    the batches and the crops drawn, fresh from --seed, or with --resume as the checkpoint in
    --out left them."""
    torch.manual_seed(args.seed)
    dtype = DTYPES[args.precision]
    encoder, channel = Encoder(args.dim).to(device, dtype), Channel().to(device, dtype)
    state = {"encoder": encoder, "channel": channel,
             "opt_theta": torch.optim.Adam(encoder.parameters(), lr=args.lr),
             "opt_eta": torch.optim.Adam(channel.parameters(), lr=args.lr)}
    g = torch.Generator(device).manual_seed(args.seed)
    if not args.resume:
        return state, g, 0, []
    ckpt = load_checkpoint(args, device)
    for key, obj in state.items():
        obj.load_state_dict(ckpt[key])
    g.set_state(ckpt["generator"])
    return state, g, ckpt["step"], ckpt["history"]


def load_run(run_dir, device="cpu", name="checkpoint.pt"):
    """(args, encoder, channel, history) of a run folder written by train.py, weights frozen; of
    its snapshot at step S with name snapshots/S.pt."""
    path = os.path.join(run_dir, name)
    if not os.path.exists(path):
        sys.exit(f"probe.py: error: {run_dir} holds no {name}: is it a run of train.py?")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    saved = {"precision": "float32", **ckpt["args"]}  # a run naming no precision ran in float32
    args = argparse.Namespace(**saved)
    dtype = DTYPES[args.precision]
    encoder, channel = Encoder(args.dim).to(device, dtype), Channel().to(device, dtype)
    try:
        encoder.load_state_dict(ckpt["encoder"])
        channel.load_state_dict(ckpt["channel"])
    except RuntimeError as e:  # e.g. a run of an encoder of another width
        last = str(e).splitlines()[-1].strip()
        sys.exit(f"probe.py: error: {run_dir}: the weights do not fit this model.py: {last}")
    for net in (encoder, channel):
        net.eval().requires_grad_(False)
    return args, encoder, channel, ckpt["history"]
