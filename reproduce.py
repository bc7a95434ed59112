"""The poster's results table, reproduced: ours and SimCLR, Regional MNIST and MNIST, seeds 0 to 5.

    python reproduce.py                    # every run not done yet, then the table
    python reproduce.py --seeds 0 1 --jobs 4

Each run is `python train.py --method M --dataset D --seed S --out runs/M-D-sS` at the defaults
of config.py: skipped where it is done and probed, resumed where it was interrupted. --jobs runs
that many at once (a GPU has room for several of these small runs; on a CPU they share its cores,
which are split between them). The table: test accuracy of the linear probe, mean +- sd over the
seeds, the poster's value in brackets.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

POSTER = {  # (dataset, output): {column: the poster's linear probe accuracy}
    ("regional", "f"): {"ours grid": 0.9551, "ours topn": 0.9552, "simclr grid": 0.3156,
                        "simclr oracle": 0.5144},
    ("regional", "h"): {"ours grid": 0.9729, "ours topn": 0.9748, "simclr grid": 0.4598,
                        "simclr oracle": 0.9354},
    ("mnist", "f"): {"ours grid": 0.9642, "ours topn": 0.9674, "simclr grid": 0.9273},
    ("mnist", "h"): {"ours grid": 0.9805, "ours topn": 0.9859, "simclr grid": 0.9806},
}


def probed(run_dir):
    """The run's test probe, or None where the run is not finished and probed."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh).get("probe_test")


def command(method, dataset, seed, extra):
    out = f"runs/{method}-{dataset}-s{seed}"
    train = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
    argv = [sys.executable, train, "--method", method, "--dataset", dataset, "--seed", str(seed),
            "--out", out, *extra]
    if os.path.exists(os.path.join(out, "checkpoint.pt")):
        argv.append("--resume")  # continues an interrupted run; a finished one just probes
    return out, argv


def run_all(runs, jobs, extra):
    """Run the runs not yet probed, jobs at a time, each logging into its folder's train.log."""
    todo = [run for run in runs if probed(f"runs/{run[0]}-{run[1]}-s{run[2]}") is None]
    threads = max(1, (os.cpu_count() or 1) // jobs)  # a CPU's cores, split between the jobs
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    running = []
    done = len(runs) - len(todo)
    t0 = time.perf_counter()
    while todo or running:
        while todo and len(running) < jobs:
            out, argv = command(*todo.pop(0), extra)
            os.makedirs(out, exist_ok=True)
            log = open(os.path.join(out, "train.log"), "a")
            running.append((out, subprocess.Popen(argv, stdout=log, stderr=log, env=env), log))
        time.sleep(1)
        for out, process, log in list(running):
            if process.poll() is None:
                continue
            log.close()
            running.remove((out, process, log))
            if process.returncode:
                sys.exit(f"reproduce.py: error: {out} failed; its log is {out}/train.log")
            done += 1
        print(f"\r{done} of {len(runs)} runs done, {len(running)} running, "
              f"{time.perf_counter() - t0:.0f}s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def table(seeds):
    """The poster's table from the runs' test probes: mean +- sd over seeds [the poster's]."""
    columns = ["ours grid", "ours topn", "simclr grid", "simclr oracle"]
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for (dataset, output), poster in POSTER.items():
        cells = []
        for column in columns:
            method, mode = column.split()
            probes = [probed(f"runs/{method}-{dataset}-s{seed}") for seed in seeds]
            if column not in poster or any(p is None or mode not in p for p in probes):
                cells.append("-")
                continue
            accuracy = [p[mode][output]["accuracy"] for p in probes]
            sd = f" +- {np.std(accuracy, ddof=1):.4f}" if len(accuracy) > 1 else ""
            cells.append(f"{np.mean(accuracy):.4f}{sd} [{poster[column]}]")
        name = "Regional MNIST" if dataset == "regional" else "MNIST"
        lines.append(f"| {name}, {output} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="The poster's results table, reproduced.")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(6)), help="seeds to run")
    p.add_argument("--jobs", type=int, help="runs at once (default: 4 on a GPU, 1 on a CPU)")
    p.add_argument("--table-only", action="store_true", help="print the table of the runs done")
    a, extra = p.parse_known_args(argv)  # the rest goes to every train.py, e.g. --device cuda
    jobs = a.jobs or (4 if torch.cuda.is_available() else 1)
    if jobs < 1:
        p.error(f"--jobs must be positive, got {jobs}")
    runs = [(method, dataset, seed) for seed in a.seeds for dataset in ("regional", "mnist")
            for method in ("ours", "simclr")]
    if not a.table_only:
        run_all(runs, jobs, extra)
    print(table(a.seeds))


if __name__ == "__main__":
    main()
