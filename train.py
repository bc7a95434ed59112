"""Algorithm 1 of Koyama et al. 2021: contrastive learning with a trainable augmentation channel.

    python train.py --method ours     # maximize the exact MI of equation (2) over the crop grid
    python train.py --method simclr   # the baseline: NT-Xent on two uniformly drawn grid crops

Each iteration of ours is Algorithm 1's pair of alternating updates (alternating_step), exact
over the crop grid, or with `--samples M` as the poster samples it: M crops per image, not all K.
The flags are in config.py; `torchrun --nproc_per_node N train.py` runs N processes, each with
B / N images of every batch (distributed.py: in one process, gather is the identity).
Shapes: B batch, b images of this process, C canvas side, K crops, d embedding.
"""
import os
import signal
import sys
import time

import torch

import distributed
import probe
from channel import crops_at, entropy, grid_offsets
from checkpoint import (fresh_or_resumed, save_json, save_run, save_snapshot,
                        stop_if_not_finite)
from config import describe, parse_args, rates
from data import load_canvases
from distributed import any_rank, gather, share_of_mean, sum_gradients, total
from model import DTYPES, autocast, resolve_precision
from objective import exact_mi, nt_xent, simclr_bound
from sampling import draw_from_channel, draw_uniform, mi_of_draws, views


def alternating_step(args, encoder, channel, opt_theta, opt_eta, xb, grid, g):
    """Algorithm 1, one iteration: (a) the encoder ascends (2) with P(T|X) held fixed, then (b)
    the channel ascends (2) + lambda H(T|X) on the codes of the updated encoder, held fixed.

    (2) runs over all K crops weighted by P(T|X), or, with --samples m, over m crops per image
    drawn as the poster draws them (sampling.py). xb: this process's canvases of the batch."""
    with autocast(xb.device, args.precision):
        logp = gather(channel(xb))  # (B, K) log P(T|X); eta does not move in (a): (b) reuses it
    mi = encoder_objective(args, encoder, xb, grid, logp.detach(), g)
    ascend(opt_theta, encoder, mi)  # (a)
    H = share_of_mean(entropy, logp)  # H(T|X), exact over the K logits
    if args.channel == "learned":  # "uniform": the ablation whose P(T|X) never moves
        z, logw = channel_views(args, encoder, xb, grid, logp, g)  # held fixed
        ascend(opt_eta, channel, objective(args, z, logw) + args.entropy_weight * H)  # (b)
    return {"MI": mi.detach(), "H": H.detach()}


def encoder_objective(args, encoder, xb, grid, logp, g):
    """(a)'s (2): on all K crops weighted by P(T|X); or on m crops per image drawn from P(T|X),
    each weighted 1/m, a draw's numerator over the other m - 1 (sampling.py)."""
    if not args.samples:
        return objective(args, encode(args, encoder, xb, grid, None), logp)
    c = draw_from_channel(logp, args.samples, g)  # (B, m)
    return mi_of_draws(encode(args, encoder, xb, grid, c), args.beta, distributed.mine(len(c)))


def channel_views(args, encoder, xb, grid, logp, g):
    """(b)'s views (z, log w), the updated encoder's codes without gradient: all K crops weighted
    by P(T|X); or m crops per image drawn uniformly, weighted by P(T|X) (sampling.py)."""
    c, logw = None, logp
    if args.samples:
        c, logw = draw_uniform(logp, args.samples, g, args.weights)  # (B, m), (B, m)
    with torch.no_grad():
        z = encode(args, encoder, xb, grid, c)  # (B, m or K, d)
    return z, logw


def encode(args, encoder, xb, grid, c):
    """z (B, m or K, d) of the batch's views c (all K crops where c is None): this process
    encodes its own canvases xb, and gather brings every process's (distributed.py)."""
    with autocast(xb.device, args.precision):
        B = len(xb) * distributed.world_size()  # of which xb is this process's share
        return gather(views(encoder, xb, grid, c, distributed.mine(B)))


def objective(args, z, logw):
    """(2), or with --objective bound its Jensen bound, on views z weighted by log w, summed over
    this process's images (all of them in one process)."""
    estimator = simclr_bound if args.objective == "bound" else exact_mi
    return estimator(z, logw, args.beta, distributed.mine(len(z)))


def ascend(opt, net, value):
    """One step of opt up the gradient of value, summed over the processes (distributed.py)."""
    opt.zero_grad(set_to_none=True)
    (-value).backward()
    sum_gradients(net)
    opt.step()


def simclr_step(args, encoder, opt_theta, xb, grid, g):
    """NT-Xent on two crops drawn uniformly from the grid for each canvas."""
    B = len(xb) * distributed.world_size()  # the batch, of which xb is this process's share
    t = grid[torch.randint(len(grid), (2, B), generator=g, device=g.device)]  # (2, B, 2)
    t1, t2 = t[:, distributed.mine(B)]  # (b, 2) each
    with autocast(xb.device, args.precision):
        z1 = gather(encoder(crops_at(xb, t1[:, None]))[1][:, 0])  # (B, d)
        z2 = gather(encoder(crops_at(xb, t2[:, None]))[1][:, 0])  # (B, d)
    # every process computes the whole loss, and the gathers' backward sums their gradients
    loss = nt_xent(z1, z2, args.beta) / distributed.world_size()
    ascend(opt_theta, encoder, -loss)
    return {"loss": loss.detach()}


def setup(args, device, main_process):
    """The train canvases, the crop grid, and the networks, optimizers and generator."""
    try:  # bad data is refused before anything is written
        x = load_canvases(args.data_dir, "train", args.dataset, args.canvas, args.seed)[0]
    except ValueError as e:
        sys.exit(f"train.py: error: {e}")
    state, g, step, history = fresh_or_resumed(args, device)
    if main_process:
        os.makedirs(args.out, exist_ok=True)
        save_json(os.path.join(args.out, "args.json"), vars(args))
        print(f"{args.method} on {args.dataset} ({len(x)} canvases of side {args.canvas}) on "
              f"{device} x {args.world_size}, {args.precision} networks: maximize "
              f"{describe(args)}", file=sys.stderr)
    x = x.to(device)  # (N, 1, C, C) uint8
    grid = grid_offsets(args.canvas).to(device)  # (K, 2)
    return x, grid, state, g, step, history


def main(argv=None):
    args = parse_args(argv)
    device = distributed.start(args.device)  # under torchrun, this process's GPU
    args.precision = resolve_precision(args.precision, device)  # before the resume check
    main_process = distributed.rank() == 0  # writes the files, prints, probes
    x, grid, state, g, start, history = setup(args, device, main_process)
    encoder, channel, opt_theta, opt_eta = state.values()
    dtype = DTYPES[args.precision]  # of the canvases, as of the weights
    interrupted = []  # Ctrl-C ends the run at a step boundary, with a checkpoint
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    budget = 60 * (args.minutes or float("inf"))  # seconds
    step = start
    t0 = time.perf_counter()
    ctrl_c = out_of_time = False
    try:
        while step < args.steps and not out_of_time:
            if args.snapshot_every and step % args.snapshot_every == 0:  # before the step: 0 too
                save_snapshot(args, state, step, history)
            idx = torch.randint(len(x), (args.batch_size,), generator=g, device=device)  # (B,)
            xb = x[idx[distributed.mine(args.batch_size)]].to(dtype) / 255  # (b, 1, C, C)
            opt_theta.param_groups[0]["lr"], opt_eta.param_groups[0]["lr"] = rates(args, step)
            if args.method == "ours":
                shown = alternating_step(args, encoder, channel, opt_theta, opt_eta, xb, grid, g)
            else:
                shown = simclr_step(args, encoder, opt_theta, xb, grid, g)
            step += 1
            logged = step % args.log_every == 0 or step == args.steps
            if logged:  # the loop's only host syncs
                shown = total(shown)  # the processes' shares, summed
                stop_if_not_finite(step - 1, shown.values(), args.out, "objective is")
                history.append({"step": step})
                for name, value in shown.items():
                    history[-1][name] = value.item()
                if main_process:
                    progress(args, history[-1], start, time.perf_counter() - t0, budget)
            if logged or distributed.world_size() == 1:  # processes agree where they sync
                late = time.perf_counter() - t0 >= budget
                ctrl_c, out_of_time = any_rank([bool(interrupted), late], device)
            if ctrl_c:
                save_run(args, state, g, step, history)
                message = (f"\ninterrupted: checkpoint of step {step} saved in {args.out}; "
                           "continue with --resume")
                sys.exit(message if main_process else 1)  # one line, not one per process
            if step % args.save_every == 0:
                save_run(args, state, g, step, history)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    seconds = time.perf_counter() - t0
    save_run(args, state, g, step, history)
    distributed.finish()
    metrics = {"steps": step, "train_seconds": seconds, "device": device.type,
               "images_per_second": (step - start) * args.batch_size / seconds}
    if main_process:
        save_json(os.path.join(args.out, "metrics.json"), metrics)
        print(f"\n{metrics}", file=sys.stderr)
        if not args.no_probe:
            probe.main([args.out])
    return metrics


def progress(args, shown, start, elapsed, budget):
    """One line, rewritten in place: a bar, the step, the objective's terms, time, throughput."""
    step = shown["step"]
    bar = "#" * int(30 * max(step / args.steps, elapsed / budget))
    values = " ".join(f"{k} {v:.3f}" for k, v in shown.items() if k != "step")
    images_per_second = (step - start) * args.batch_size / elapsed
    print(f"\r[{bar:.<30}] step {step} {values} {elapsed:.0f}s {images_per_second:.0f} img/s",
          end="", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
