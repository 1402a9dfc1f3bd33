"""Results of ``tools/experiment.py`` as a table and plots.

    python tools/report.py --out runs/experiment --docs docs

Reads every ``<out>/<task>-<input>/seed<k>/<variant>.json`` and ``pretrain.json`` and writes
``<docs>/results.md`` (success before and after finetuning, mean and standard deviation over
seeds, the settings and the exact command) and ``<docs>/success_by_trial_<task>[-pixels].png``
(success of each online trial, mean over seeds with the spread shaded, one line per variant).
A discussion written by hand can be kept in ``<docs>/results-notes.md``; it is copied in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

VARIANT_ORDER = ("fowm", "lambda0", "no_balance", "scratch")
VARIANT_LABEL = {
    "fowm": "FOWM (lambda 1, balanced)",
    "lambda0": "lambda 0, balanced",
    "no_balance": "lambda 1, one buffer",
    "scratch": "TD-MPC from scratch",
}
TASK_ORDER = ("reach", "push", "lift")


def load_results(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(variant results, pretrain results, settings) found under ``out``."""
    runs, pretrains = [], []
    for path in sorted(out.glob("*/seed*/*.json")):
        data = json.loads(path.read_text())
        (pretrains if path.name == "pretrain.json" else runs).append(data)
    settings_path = out / "settings.json"
    settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
    return runs, pretrains, settings


def _key(run: dict[str, Any]) -> tuple[int, int, int]:
    task = TASK_ORDER.index(run["task"]) if run["task"] in TASK_ORDER else len(TASK_ORDER)
    variant = VARIANT_ORDER.index(run["variant"]) if "variant" in run else -1
    return (task, run["input"] != "state", variant)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    array = np.asarray(values, float)
    return f"{array.mean():.2f} ± {array.std():.2f}"


def group_runs(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in sorted(runs, key=_key):
        groups.setdefault((run["task"], run["input"], run["variant"]), []).append(run)
    return groups


def table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| task | input | variant | success before | success after | change | "
        "success during the trials | n seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (task, kind, variant), group in group_runs(runs).items():
        before = [r["success_before"] for r in group if r["success_before"] is not None]
        after = [r["success_after"] for r in group]
        change = [r["success_after"] - r["success_before"] for r in group
                  if r["success_before"] is not None]
        trials = [float(np.mean(r["trial_success"])) for r in group if r["trial_success"]]
        before_text = _mean_std(before) if before else "— (untrained)"
        lines.append(
            f"| {task} | {kind} | {VARIANT_LABEL.get(variant, variant)} | {before_text} | "
            f"{_mean_std(after)} | {_mean_std(change)} | {_mean_std(trials)} | {len(group)} |"
        )
    return lines


def per_seed(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | input | variant | seed | before | after | trial successes |",
             "|---|---|---|---|---|---|---|"]
    for run in sorted(runs, key=lambda r: (*_key(r), r["seed"])):
        before = "—" if run["success_before"] is None else f"{run['success_before']:.2f}"
        trials = "".join("1" if s else "0" for s in run["trial_success"])
        lines.append(f"| {run['task']} | {run['input']} | {run['variant']} | {run['seed']} | "
                     f"{before} | {run['success_after']:.2f} | `{trials}` |")
    return lines


def pretrain_table(pretrains: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | input | dataset episodes (expert success) | updates | seeds | "
             "success after pretraining (lambda 1) | pretrain time (s) |",
             "|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in sorted(pretrains, key=_key):
        groups.setdefault((record["task"], record["input"]), []).append(record)
    for (task, kind), group in groups.items():
        data = group[0]["dataset"]
        success = [r["eval"]["success"] for r in group]
        seconds = [r["pretrain_seconds"] for r in group]
        lines.append(f"| {task} | {kind} | {data['episodes']} ({data['success_rate']:.0%}) | "
                     f"{group[0]['updates']} | {len(group)} | {_mean_std(success)} | "
                     f"{np.mean(seconds):.0f} |")
    return lines


def plot(runs: list[dict[str, Any]], docs: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_task: dict[tuple[str, str], dict[str, list[list[bool]]]] = {}
    for run in sorted(runs, key=_key):
        curves = by_task.setdefault((run["task"], run["input"]), {})
        curves.setdefault(run["variant"], []).append(run["trial_success"])
    for (task, kind), curves in by_task.items():
        figure, axis = plt.subplots(figsize=(6, 3.6))
        for variant, rows in curves.items():
            length = min(len(r) for r in rows)
            if length == 0:
                continue
            data = np.asarray([r[:length] for r in rows], float)
            # success of each trial, smoothed over a window of 5 trials
            window = min(5, length)
            kernel = np.ones(window) / window
            smooth = np.stack([np.convolve(np.pad(row, (window - 1, 0), mode="edge"), kernel,
                                           mode="valid") for row in data])
            mean, std = smooth.mean(0), smooth.std(0)
            trials = np.arange(1, length + 1)
            axis.plot(trials, mean, label=f"{VARIANT_LABEL.get(variant, variant)} "
                      f"(n={len(rows)})")
            axis.fill_between(trials, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1),
                              alpha=0.2)
        axis.set_xlabel("online trial (episode)")
        axis.set_ylabel("success (moving mean of 5)")
        axis.set_ylim(-0.02, 1.02)
        axis.set_title(f"{task}, {kind} input: success during finetuning")
        axis.legend(fontsize=7, loc="upper left")
        figure.tight_layout()
        suffix = "" if kind == "state" else f"-{kind}"
        path = docs / f"success_by_trial_{task}{suffix}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def write_report(out: Path, docs: Path, command: str = "") -> Path:
    runs, pretrains, settings = load_results(out)
    docs.mkdir(parents=True, exist_ok=True)
    plots = plot(runs, docs)
    notes_path = docs / "results-notes.md"
    notes = notes_path.read_text().strip() if notes_path.exists() else ""
    shown = {k: v for k, v in settings.items() if k != "command"}
    lines = [
        "# Offline-to-online results (simulated xArm)",
        "",
        "Generated by `tools/report.py` from the JSON results of `tools/experiment.py`; every "
        "number is as measured. Success rates are over a fixed set of evaluation episodes "
        "(env seeds 10000.., no exploration); mean ± standard deviation over seeds (population "
        "std, ddof 0). With 10 evaluation episodes a rate moves in steps of 0.1.",
        "",
        "Made with:",
        "",
        "```",
        settings.get("command", "(unknown command)"),
        command or f"python tools/report.py --out {out} --docs {docs}",
        "```",
        "",
        f"## Success before and after {settings.get('trials', '?')} online trials",
        "",
        *table(runs),
        "",
        "\"success before\" is the pretrained model evaluated with the variant's own lambda; "
        "TD-MPC from scratch starts from an untrained model (not evaluated). \"success during "
        "the trials\" is the share of the finetuning episodes themselves that succeeded (with "
        "exploration noise).",
        "",
        "## Pretraining",
        "",
        *pretrain_table(pretrains),
        "",
        "## Plots",
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(shown, indent=1),
        "```",
        "",
    ]
    if notes:
        lines += [notes, ""]
    lines += ["## Every run", "", *per_seed(runs), ""]
    path = docs / "results.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/experiment"))
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    command = "python tools/report.py " + " ".join(sys.argv[1:] if argv is None else argv)
    path = write_report(args.out, args.docs, command.strip())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
