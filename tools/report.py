"""Results of ``tools/experiment.py`` as ``docs/results.json``, then ``docs/results.md`` and plots.

    python tools/report.py --out runs/experiment [runs/experiment-pixels ...] --docs docs

Reads the JSON files under ``<out>/<task>-<input>/seed<k>/`` of every ``--out`` (one
experiment each, e.g. the state experiment and the pixel one) and writes, in this order:

- ``<docs>/results.json``: per task, evaluation distribution (the variant), input and method,
  ``success_before`` and ``success_after`` (each ``mean``, ``std`` over seeds (ddof 0) and
  ``per_seed``), ``seeds``, ``eval_episodes``, ``trial_successes`` (per seed, per trial) and the
  exact ``command``; also the pretraining runs with their value checks, and the calibration check;
- ``<docs>/results.md`` from that JSON alone: tables, the plots, the settings, and a discussion
  written by hand in ``<docs>/results-notes.md`` (copied in);
- ``<docs>/success_by_trial_<task>[-pixels].png``: success against online trial, mean over
  seeds with the spread shaded, one line per method; ``<docs>/pretraining_<task>[-pixels].png``:
  the value check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

METHOD_ORDER = ("fowm", "lambda0", "one_buffer", "scratch", "pretrained", "max_q")
METHOD_LABEL = {
    "fowm": "FOWM (lambda 1, balanced)",
    "lambda0": "lambda 0, balanced",
    "one_buffer": "lambda 1, one buffer",
    "scratch": "TD-MPC from scratch",
    "pretrained": "pretrained, no finetuning",
    "max_q": "max-Q pretraining (TD-MPC), lambda 0, balanced",
}
TASK_ORDER = ("reach", "push", "lift")


def label(method: str) -> str:
    if method.startswith("sweep_lambda"):
        return f"lambda {method[len('sweep_lambda'):]}, balanced"
    if method.startswith("sweep_online"):
        return f"lambda 1, online share {method[len('sweep_online'):]}"
    return METHOD_LABEL.get(method, method)


def _stats(values: list[float]) -> dict[str, Any]:
    array = np.asarray(values, float)
    return {"mean": float(array.mean()) if len(array) else None,
            "std": float(array.std()) if len(array) else None,
            "per_seed": [float(v) for v in values]}


def _task_key(task: str) -> int:
    return TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)


def _method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


# ---- results.json ---------------------------------------------------------------------------


def _settings(out: Path) -> dict[str, Any]:
    path = out / "settings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def collect(outs: Path | list[Path], command: str = "") -> dict[str, Any]:
    """Everything of one or more experiment directories as the results.json document; each
    result row keeps the command of the experiment it came from."""
    outs = [outs] if isinstance(outs, Path) else list(outs)
    experiments = [_settings(out) for out in outs]
    settings = experiments[0]
    runs, pretrains, calibrations = [], [], []
    for out, experiment in zip(outs, experiments, strict=True):
        for path in sorted(out.glob("*/seed*/*.json")):
            data = {**json.loads(path.read_text()), "command": experiment.get("command", "")}
            if path.name.startswith("pretrain_"):
                pretrains.append(data)
            elif path.name == "calibration.json":
                calibrations.append(data)
            elif "method" in data:
                runs.append(data)
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        key = (run["task"], run["variant"], run["input"], run["method"])
        groups.setdefault(key, []).append(run)
    results = []
    for (task, variant, kind, method), group in sorted(
            groups.items(), key=lambda item: (_task_key(item[0][0]), item[0][1:3],
                                              _method_key(item[0][3]))):
        group.sort(key=lambda r: r["seed"])
        before = [r["success_before"] for r in group if r["success_before"] is not None]
        results.append({
            "task": task, "distribution": variant, "input": kind, "method": method,
            "label": label(method), "sweep": method.startswith("sweep_"),
            "settings": group[0]["settings"],
            "success_before": _stats(before) if before else None,
            "success_after": _stats([r["success_after"] for r in group]),
            "seeds": [r["seed"] for r in group],
            "eval_episodes": group[0]["after"]["episodes"],
            "trial_successes": [[bool(s) for s in r["trial_successes"]] for r in group],
            "pretrain_updates": [r["pretrain_updates"] for r in group],
            "online_updates": group[0]["online_updates"],
            "command": group[0]["command"],
        })
    return {
        "command": settings.get("command", ""),
        "commands": [e.get("command", "") for e in experiments],
        "report_command": command,
        "settings": {k: v for k, v in settings.items() if k != "command"},
        "experiments": experiments,
        "results": results,
        "pretraining": _pretraining(pretrains),
        "calibration": _calibration(calibrations),
    }


def _pretraining(pretrains: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in pretrains:
        key = (record["task"], record["input"], record["pretraining"])
        groups.setdefault(key, []).append(record)
    out = []
    for (task, kind, pretraining), group in sorted(groups.items(),
                                                   key=lambda i: (_task_key(i[0][0]), i[0][1:])):
        group.sort(key=lambda r: r["seed"])
        out.append({
            "task": task, "input": kind, "pretraining": pretraining,
            "seeds": [r["seed"] for r in group],
            "updates": [r["updates"] for r in group],
            "converged": [r["converged"] for r in group],
            "value_ratio": _stats([r["final_check"]["value_ratio"] for r in group]),
            "success_train": _stats([r["eval_train"]["success"] for r in group]),
            "eval_lambda": group[0]["eval_lambda"],
            "eval_episodes": group[0]["eval_train"]["episodes"],
            "seconds": _stats([r["seconds"] for r in group]),
            "dataset": group[0]["dataset"],
            "history": [[(h["step"], h["value_ratio"]) for h in r["history"]] for r in group],
        })
    return out


def _calibration(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_task: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_task.setdefault(record["task"], []).append(record)
    out = []
    for task, group in sorted(by_task.items(), key=lambda i: _task_key(i[0])):
        group.sort(key=lambda r: r["seed"])
        sets = {}
        for name in group[0]["sets"]:
            sets[name] = {key: _stats([r["sets"][name][key] for r in group])
                          for key in ("spearman", "spearman_reward", "spearman_dynamics",
                                      "spread_mean", "reward_error_mean",
                                      "dynamics_error_mean")}
            sets[name]["transitions"] = group[0]["sets"][name]["transitions"]
        out.append({"task": task, "variant": group[0]["variant"],
                    "seeds": [r["seed"] for r in group], "sets": sets})
    return out


# ---- results.md -----------------------------------------------------------------------------


def _ms(stats: dict[str, Any] | None) -> str:
    if not stats or stats["mean"] is None:
        return "—"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def _halves(trials: list[list[bool]]) -> tuple[float, float]:
    first = [np.mean(t[: len(t) // 2]) for t in trials if len(t) >= 2]
    second = [np.mean(t[len(t) // 2:]) for t in trials if t]
    return (float(np.mean(first)) if first else float("nan"),
            float(np.mean(second)) if second else float("nan"))


def results_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | evaluated on | input | method | success before | success after | "
             "change | trials, first half | trials, second half | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        change = "—"
        if r["success_before"] is not None:
            diffs = np.subtract(r["success_after"]["per_seed"], r["success_before"]["per_seed"])
            change = f"{diffs.mean():+.2f} ± {diffs.std():.2f}"
        first, second = _halves(r["trial_successes"])
        before = _ms(r["success_before"]) if r["success_before"] else "— (untrained)"
        lines.append(f"| {r['task']} | {r['distribution']} | {r['input']} | {r['label']} | "
                     f"{before} | "
                     f"{_ms(r['success_after'])} | {change} | {first:.2f} | {second:.2f} | "
                     f"{len(r['seeds'])} |")
    return lines


def per_seed_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | input | method | seed | before | after | trial successes |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for index, seed in enumerate(r["seeds"]):
            before = ("—" if r["success_before"] is None
                      else f"{r['success_before']['per_seed'][index]:.2f}")
            trials = "".join("1" if s else "0" for s in r["trial_successes"][index])
            lines.append(f"| {r['task']} | {r['input']} | {r['method']} | {seed} | {before} | "
                         f"{r['success_after']['per_seed'][index]:.2f} | `{trials}` |")
    return lines


def pretraining_table(pretraining: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | input | pretraining | dataset episodes (expert success) | "
             "updates per seed | converged | Q / return on expert data | "
             "success, training distribution | seconds | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in pretraining:
        data = p["dataset"]
        converged = (f"{sum(p['converged'])}/{len(p['converged'])}"
                     if p["pretraining"] == "in_sample" else "n/a (the in-sample budget)")
        lines.append(
            f"| {p['task']} | {p['input']} | {p['pretraining']} | {data['episodes']} "
            f"({data['success_rate']:.0%}) | {', '.join(map(str, p['updates']))} | "
            f"{converged} | {_ms(p['value_ratio'])} | "
            f"{_ms(p['success_train'])} (lambda {p['eval_lambda']:g}) | "
            f"{p['seconds']['mean']:.0f} | {len(p['seeds'])} |")
    return lines


def calibration_table(calibration: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | held-out set | transitions | Spearman (spread, reward + dynamics error) "
             "| Spearman (spread, reward error) | Spearman (spread, dynamics error) | "
             "mean spread | mean reward error | mean dynamics error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in calibration:
        for name, s in c["sets"].items():
            shown = c["variant"] if name == "variant" else name
            lines.append(f"| {c['task']} | {shown} | {s['transitions']} | {_ms(s['spearman'])} "
                         f"| {_ms(s['spearman_reward'])} | {_ms(s['spearman_dynamics'])} | "
                         f"{s['spread_mean']['mean']:.3f} | "
                         f"{s['reward_error_mean']['mean']:.3f} | "
                         f"{s['dynamics_error_mean']['mean']:.3f} |")
    return lines


def _plot_name(task: str, kind: str) -> str:
    """File name part of a task's plots: the task for state input, ``<task>-<input>`` else."""
    return task if kind == "state" else f"{task}-{kind}"


def plot_trials(results: list[dict[str, Any]], docs: Path, sweep: bool) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if r["sweep"] == sweep or (sweep and r["method"] in ("fowm", "lambda0")):
            by_task.setdefault(_plot_name(r["task"], r["input"]), []).append(r)
    written = []
    for task, group in by_task.items():
        if sweep and not any(r["sweep"] for r in group):
            continue
        figure, axis = plt.subplots(figsize=(6.4, 3.8))
        for r in group:
            rows = [t for t in r["trial_successes"] if t]
            if not rows:
                continue
            length = min(len(t) for t in rows)
            data = np.asarray([t[:length] for t in rows], float)
            window = min(5, length)  # success of each trial, moving mean over 5 trials
            kernel = np.ones(window) / window
            smooth = np.stack([np.convolve(np.pad(row, (window - 1, 0), mode="edge"), kernel,
                                           mode="valid") for row in data])
            mean, std = smooth.mean(0), smooth.std(0)
            trials = np.arange(1, length + 1)
            axis.plot(trials, mean, label=f"{r['label']} (n={len(rows)})")
            axis.fill_between(trials, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1),
                              alpha=0.15)
        axis.set_xlabel("online trial")
        axis.set_ylabel("success (moving mean of 5)")
        axis.set_ylim(-0.02, 1.02)
        axis.set_title(f"{group[0]['task']} ({group[0]['input']}) on {group[0]['distribution']}: "
                       "success during finetuning"
                       + (" (sweep)" if sweep else ""))
        axis.legend(fontsize=6.5, loc="upper left")
        figure.tight_layout()
        path = docs / f"{'sweep' if sweep else 'success_by_trial'}_{task}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def plot_pretraining(pretraining: list[dict[str, Any]], docs: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for task, kind in sorted({(p["task"], p["input"]) for p in pretraining},
                             key=lambda k: (_task_key(k[0]), k[1] != "state")):
        figure, axis = plt.subplots(figsize=(6.4, 3.4))
        for p in (p for p in pretraining if (p["task"], p["input"]) == (task, kind)):
            style = "-" if p["pretraining"] == "in_sample" else ":"
            for index, history in enumerate(p["history"]):
                steps, ratios = zip(*history, strict=True) if history else ((), ())
                axis.plot(steps, ratios, style, color=f"C{index}", alpha=0.8,
                          label=f"{p['pretraining']} seed {p['seeds'][index]}")
        axis.axhline(1.0, color="grey", lw=0.8)
        axis.set_xlabel("offline updates")
        axis.set_ylabel("Q / Monte-Carlo return, expert data")
        axis.set_title(f"{task} ({kind}): value check during pretraining")
        axis.legend(fontsize=6, ncol=2)
        figure.tight_layout()
        path = docs / f"pretraining_{_plot_name(task, kind)}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def write_markdown(document: dict[str, Any], docs: Path) -> Path:
    results = document["results"]
    main_results = [r for r in results if not r["sweep"]]
    sweep_task = document["settings"].get("sweep_task")
    sweep = [r for r in results if r["sweep"]
             or (r["task"] == sweep_task and r["method"] in ("fowm", "lambda0")
                 and r["command"] == document["command"])]  # the sweep's own experiment
    plots = plot_trials(results, docs, sweep=False)
    sweep_plots = plot_trials(results, docs, sweep=True)
    pretrain_plots = plot_pretraining(document["pretraining"], docs)
    notes_path = docs / "results-notes.md"
    notes = notes_path.read_text().strip() if notes_path.exists() else ""
    settings = document["settings"]
    episodes = sorted({r["eval_episodes"] for r in results})
    lines = [
        "# Offline-to-online results (simulated xArm)",
        "",
        "Written by `tools/report.py` from `docs/results.json`, which it builds from the JSON "
        "files of `tools/experiment.py`; every number is as measured. Offline data comes from "
        "each task's training distribution; the online trials and every evaluation use the "
        "variant in the \"evaluated on\" column (`config/variants.yaml`). Success rates are "
        f"over {', '.join(map(str, episodes)) or '?'} fixed evaluation episodes (env seeds "
        "10000.., no exploration), mean ± standard deviation over seeds (ddof 0).",
        "",
        "Made with:",
        "",
        "```",
        *(document.get("commands") or [document["command"] or "(unknown command)"]),
        document["report_command"],
        "```",
        "",
    ]
    if notes:
        lines += [notes, ""]
    lines += [
        f"## Success before and after {settings.get('trials', '?')} online trials",
        "",
        *results_table(main_results),
        "",
        "\"success before\" is the pretrained model on the variant, planning with the "
        "method's own lambda; TD-MPC from scratch starts untrained. The two \"trials\" columns "
        "are the shares of the finetuning episodes themselves that succeeded "
        "(with exploration noise).",
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
        "",
    ]
    if sweep:
        lines += [f"## Sweep on {sweep_task}: lambda and the online share of each batch", "",
                  *results_table(sweep), "", *[f"![{p.stem}]({p.name})" for p in sweep_plots],
                  ""]
    if document["calibration"]:
        lines += ["## Is the penalty calibrated?", "",
                  "Held-out scripted episodes (dataset seed 7, never trained on) from the "
                  "training distribution and from the variant. Spread: std of the Q ensemble "
                  "at (enc(o), a); errors: the model's real one-step reward error |R - r| and "
                  "latent dynamics error. Mean ± std over the pretrained models' seeds.", "",
                  *calibration_table(document["calibration"]), ""]
    lines += ["## Pretraining", "",
              "In-sample (FOWM) pretraining stops once Q on the dataset's successful episodes "
              "has reached 1 - tolerance of their Monte-Carlo return at two checks in a row "
              "(`tdmpc_ros/core/pretraining.py`); max-Q (standard TD-MPC) pretraining runs as "
              "many updates as the in-sample model of the same seed.", "",
              *pretraining_table(document["pretraining"]), "",
              *[f"![{p.stem}]({p.name})" for p in pretrain_plots], "",
              "## Settings", "",
              *[line for experiment in document.get("experiments", [settings])
                for line in ("```json", json.dumps(experiment, indent=1), "```", "")],
              "## Every run", "", *per_seed_table(results), ""]
    path = docs / "results.md"
    path.write_text("\n".join(lines))
    return path


def write_report(out: Path | list[Path], docs: Path, command: str = "") -> Path:
    docs.mkdir(parents=True, exist_ok=True)
    outs = [out] if isinstance(out, Path) else list(out)
    document = collect(outs, command or "python tools/report.py --out "
                       f"{' '.join(map(str, outs))} --docs {docs}")
    (docs / "results.json").write_text(json.dumps(document, indent=1))
    return write_markdown(document, docs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, nargs="+", default=[Path("runs/experiment")],
                        help="experiment directories (tools/experiment.py --out), merged")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    command = "python tools/report.py " + " ".join(sys.argv[1:] if argv is None else argv)
    path = write_report(args.out, args.docs, command.strip())
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
