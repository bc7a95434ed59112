"""Tables and figures across runs of train.py, from their args.json and metrics.json.

    python compare.py table --by batch_size,steps RUN_DIR ...  # validation probes, by settings
    python compare.py sampled-vs-exact RUN_DIR ...  # the exact sum against the poster's m
    python compare.py collapse RUN_DIR ...          # probes over training, from snapshots/

Every number is a validation measurement (probe.py RUN_DIR --val, or the small probe of
`collapse`): the test split is not read. Mean +- standard deviation over the runs (seeds) of
each setting.
"""
import argparse
import json
import os

import numpy as np
import torch

import figures
import probe
from checkpoint import load_run, save_json
from data import load_canvases

FIT, SCORED = 10000, 5000  # collapse's small probe: fits train[:FIT], scores SCORED of validation


def read(run_dir, name):
    with open(os.path.join(run_dir, name)) as fh:
        return json.load(fh)


def runs_by(run_dirs, key):
    """{key(args): [(args, metrics) of each run]} of runs probed with --val; key gives a tuple."""
    groups = {}
    for run_dir in run_dirs:
        args, metrics = read(run_dir, "args.json"), read(run_dir, "metrics.json")
        if "probe_val" not in metrics:
            raise SystemExit(f"compare.py: error: {run_dir} has no validation probe: run "
                             f"python probe.py {run_dir} --val")
        groups.setdefault(key(args), []).append((args, metrics))
    return dict(sorted(groups.items(), key=lambda item: [(v is not None, v) for v in item[0]]))


def mean_sd(values, digits=4):
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} +- {np.std(values, ddof=1):.{digits}f}"


def table(groups, names):
    """Print one row per setting (names: its key's): grid f and h on validation, the code's
    diagnostics, time."""
    columns = [*names, "runs", "grid f", "grid h", "exact MI", "H(T|X)", "digit coverage",
               "feature std", "training s", "images/s"]
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for key, runs in groups.items():
        val = [metrics["probe_val"] for _, metrics in runs]
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in key] + [str(len(runs))]
        cells += [mean_sd([v["grid"][k]["accuracy"] for v in val]) for k in "fh"]
        for name in ("mi", "entropy", "digit_coverage", "feature_std"):
            cells.append(f"{np.mean([v['diagnostics'][name] for v in val]):.3f}")
        cells.append(mean_sd([metrics["train_seconds"] for _, metrics in runs], 0))
        cells.append(f"{np.mean([metrics['images_per_second'] for _, metrics in runs]):.0f}")
        print("| " + " | ".join(cells) + " |")


def sampled_vs_exact(run_dirs, path):
    """The table, and grid h and f on validation against training seconds: a dot per run, each
    setting's mean and standard deviation; one panel of h for each further canvas."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = runs_by(run_dirs, lambda args: (args["canvas"], args.get("samples", 0),
                                             args["minutes"] is not None))
    table(groups, ["canvas", "m (0: exact)", "at the exact sum's time"])
    canvases = sorted({canvas for canvas, _, _ in groups})
    panels = [(canvases[0], "h"), (canvases[0], "f")] + [(c, "h") for c in canvases[1:]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    for (canvas, m, minutes), runs in groups.items():
        label = ("exact sum" if m == 0 else f"m = {m}") + (", exact's time" if minutes else "")
        seconds = np.array([metrics["train_seconds"] for _, metrics in runs])  # (runs,)
        color = "black" if m == 0 else plt.cm.viridis(np.log2(m) / 4.5)
        for ax, (panel_canvas, k) in zip(axes, panels):
            if panel_canvas != canvas:
                continue
            grid = np.array([metrics["probe_val"]["grid"][k]["accuracy"] for _, metrics in runs])
            ax.scatter(seconds, grid, s=10, color=color, alpha=0.4)
            spread = {}  # one run: no bars
            if len(runs) > 1:
                spread = {"xerr": seconds.std(ddof=1), "yerr": grid.std(ddof=1)}
            ax.errorbar(seconds.mean(), grid.mean(), **spread, color=color, label=label,
                        capsize=3, ms=7, marker="*" if m == 0 else "o",
                        mfc="white" if minutes else color)
    for ax, (canvas, k) in zip(axes, panels):
        output = "encoder h" if k == "h" else "projection head f"
        steps = {args["steps"] for (c, _, timed), runs in groups.items() for args, _ in runs
                 if c == canvas and not timed}
        K = ((canvas - 28) // 4 + 1) ** 2  # the grid's crops
        ax.set(xlabel="training seconds", ylabel=f"validation accuracy, {output} (grid)",
               title=f"canvas {canvas} (K = {K}), {', '.join(map(str, steps))} steps")
        ax.legend(fontsize=7)
    fig.subplots_adjust(wspace=0.3)
    fig.suptitle("The exact sum over the crop grid against the poster's m crops drawn per image")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def over_training(run_dir):
    """[{step, grid f and h of the small probe, feature std, exact MI}] of each snapshot of
    run_dir and of its final checkpoint, the diagnostics on 1,000 of the scored canvases."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = load_run(run_dir)[0]
    x, y, offsets = load_canvases(args.data_dir, "train", args.dataset, args.canvas, args.seed)
    fit, scored = slice(0, FIT), slice(probe.VAL, probe.VAL + SCORED)
    snapshots = os.listdir(os.path.join(run_dir, "snapshots"))  # STEP.pt
    final = read(run_dir, "metrics.json")["steps"]  # in checkpoint.pt
    rows = []
    for step in sorted(int(name.split(".")[0]) for name in snapshots) + [final]:
        name = "checkpoint.pt" if step == final else f"snapshots/{step}.pt"
        args, encoder, channel, _ = load_run(run_dir, device, name)
        feats = [probe.features(encoder, channel, x[part], offsets[part], ["grid"], {},
                                args.precision)["grid"] for part in (fit, scored)]
        row = {"step": step}
        for k in "fh":
            fitted = probe.linear_probe(feats[0][k], y[fit].numpy(), feats[1][k],
                                        y[scored].numpy(), args.seed)
            row[k] = fitted["accuracy"]
        diagnostics = figures.diagnostics(args, encoder, channel, x[scored][:1000].to(device))
        rows.append({**row, "feature_std": diagnostics["feature_std"], "mi": diagnostics["mi"]})
        print(run_dir, rows[-1])
    return rows


def collapse(run_dirs, path):
    """Grid h and f of the small probe, the codes' spread and exact MI against training steps:
    a thin line per run, a thick one per method and batch size (their mean), and the table of
    those means. over_training's rows are kept in each run's collapse.json and read from there
    when drawn again."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = {}
    for run_dir in run_dirs:
        if not os.path.exists(os.path.join(run_dir, "collapse.json")):
            save_json(os.path.join(run_dir, "collapse.json"), over_training(run_dir))
        args = read(run_dir, "args.json")
        key = f"{args['method']}, B {args['batch_size']}"
        series.setdefault(key, []).append(read(run_dir, "collapse.json"))
    panels = {"h": "grid h, encoder", "f": "grid f, projection head", "mi": "exact MI (nats)",
              "feature_std": "spread of the codes (feature std)"}
    print("| run | runs | step | " + " | ".join(panels) + " |\n" + "|---" * (3 + len(panels)) + "|")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6))
    for i, (key, runs) in enumerate(sorted(series.items())):
        steps = [row["step"] for row in runs[0]]
        values = {name: np.array([[row[name] for row in rows] for rows in runs])  # (runs, steps)
                  for name in panels}
        for ax, name in zip(axes, panels):
            for run in values[name]:
                ax.plot(steps, run, color=f"C{i}", alpha=0.3, lw=0.8)
            label = f"{key} ({len(runs)} runs)"
            ax.plot(steps, values[name].mean(0), color=f"C{i}", lw=2, label=label)
        for j, step in enumerate(steps):
            cells = [mean_sd(list(values[name][:, j])) for name in panels]
            print(f"| {key} | {len(runs)} | {step} | " + " | ".join(cells) + " |")
    for ax, (name, title) in zip(axes, panels.items()):
        ax.set(xlabel="training step", title=title)
        ax.locator_params(axis="x", nbins=4)  # step labels that do not run together
        ax.legend(fontsize=7)
    axes[-1].axhline(50 ** -0.5, color="gray", ls=":", lw=1)  # uniform codes, the default d = 50
    fig.suptitle(f"Over training: a small validation probe (fitted on {FIT:,} train images, "
                 f"scored on {SCORED:,} validation images) and the codes of 1,000 of them", y=1.02)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main(argv=None):
    p = argparse.ArgumentParser(description="Tables and figures across runs of train.py.")
    p.add_argument("what", choices=["table", "sampled-vs-exact", "collapse"],
                   help="what to print or draw")
    p.add_argument("run_dirs", nargs="+", help="run folders of train.py, probed with --val")
    p.add_argument("--by", default="method", help="args.json keys of a table's rows, a,b,...")
    p.add_argument("--out", help="the figure's PNG (default figures/WHAT.png)")
    a = p.parse_args(argv)
    path = a.out or os.path.join("figures", f"{a.what}.png")
    if a.what == "table":
        keys = a.by.split(",")
        table(runs_by(a.run_dirs, lambda args: tuple(args.get(k) for k in keys)), keys)
    elif a.what == "sampled-vs-exact":
        sampled_vs_exact(a.run_dirs, path)
    else:
        collapse(a.run_dirs, path)


if __name__ == "__main__":
    main()
