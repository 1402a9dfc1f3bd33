"""Benchmark of the core: milliseconds per plan and learner updates per second.

Prints one JSON object a line:

    {"bench": "plan", "setting": "paper"|"fast", "input": "state"|"pixels", "ms_per_plan": ...,
     "device": ..., "threads": ..., "precision": ..., "cpu": ..., "cpu_flags": [...],
     "gflop_per_plan": ..., "gflops": ..., "bound_gflops": ..., "fraction_of_bound": ...}
    {"bench": "update", "input": "state"|"pixels", "batch": 256, "image_size": ...,
     "updates_per_s": ..., "device": ..., "threads": ..., "precision": ...,
     "page_faults_per_update": ...}

``gflop_per_plan`` counts the paper's arithmetic of one plan (``planner.plan_flops``);
``bound_gflops`` is a large matrix product's rate in the same precision on the same threads,
measured in the run (near the hardware's peak), and ``fraction_of_bound`` how much of it a plan
reaches.

"paper" is the paper's planner (512 samples, 6 iterations, 50 elites, horizon 5, 512-wide
heads, lambda 1); "fast" is ``config.fast_config()`` (256 samples, 4 iterations, 256 wide).
"pixels" is the project's camera input: an 84x84 RGB image and proprioception
(``pixels+proprio``); "state" a 16-d state. Actions are 4-d, like the xArm's.
Figures are medians over repeats after a warm-up, on untrained weights (the cost of a plan
does not depend on the values). ``--device`` and ``--threads`` choose where it runs;
``--precision`` overrides ``planner.precision`` (default: the config's "auto").
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tdmpc_ros.core.agent import Agent  # noqa: E402
from tdmpc_ros.core.config import Config, fast_config  # noqa: E402
from tdmpc_ros.core.episodes import Episode  # noqa: E402
from tdmpc_ros.core.planner import (  # noqa: E402
    cpu_bf16_native,
    cpu_summary,
    plan_flops,
    resolve_precision,
)
from tdmpc_ros.core.world_model import ModelSpec  # noqa: E402

STATE_DIM, PROPRIO_DIM, ACTION_DIM = 16, 7, 4  # an xArm-like task
CPU = cpu_summary()


def spec_for(input_kind: str, image_size: int = 84) -> ModelSpec:
    if input_kind == "state":
        return ModelSpec({"state": (STATE_DIM,)}, ACTION_DIM)
    return ModelSpec({"pixels": (image_size, image_size, 3), "proprio": (PROPRIO_DIM,)},
                     ACTION_DIM)


def observation(spec: ModelSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for key, shape in spec.obs_shapes.items():
        if key == "pixels":
            out[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            out[key] = rng.standard_normal(shape).astype(np.float32)
    return out


def random_episode(spec: ModelSpec, steps: int, index: int, rng: np.random.Generator) -> Episode:
    observations = {key: np.stack([observation(spec, rng)[key] for _ in range(steps + 1)])
                    for key in spec.obs_shapes}
    end = np.zeros(steps, bool)
    end[-1] = True
    return Episode(observations=observations,
                   actions=rng.uniform(-1, 1, (steps, ACTION_DIM)).astype(np.float32),
                   rewards=rng.standard_normal(steps).astype(np.float32),
                   terminated=np.zeros(steps, bool), truncated=end,
                   success=np.zeros(steps, bool), episode_id=f"bench_{index}", task="bench")


def settings(config: Config, input_kind: str, args: argparse.Namespace) -> Config:
    overrides = {"device": args.device, "model.obs_type":
                 "state" if input_kind == "state" else "pixels+proprio"}
    if args.cuda_graphs:
        overrides["planner.cuda_graphs"] = True
    if args.precision:
        overrides["planner.precision"] = args.precision
        overrides["learner.precision"] = args.precision
    return config.replace(**overrides)


def bench_plan(setting: str, input_kind: str, args: argparse.Namespace) -> dict:
    base = Config() if setting == "paper" else fast_config()
    config = settings(base, input_kind, args)
    spec = spec_for(input_kind)
    agent = Agent(config, spec, acting_only=True)
    rng = np.random.default_rng(0)
    obs = observation(spec, rng)
    for _ in range(args.warmup):
        agent.act(obs)
    times = []
    for _ in range(args.repeats):
        obs = observation(spec, rng)
        start = time.perf_counter()
        agent.act(obs)
        if agent.device.type == "cuda":
            torch.cuda.synchronize(agent.device)
        times.append((time.perf_counter() - start) * 1e3)
    dtype = resolve_precision(config.planner.precision, agent.device)
    ms = statistics.median(times)
    gflop = plan_flops(config, spec.obs_shapes, spec.action_dim) / 1e9
    bound = matmul_gflops(dtype, agent.device)
    return {"bench": "plan", "setting": setting, "input": input_kind,
            "ms_per_plan": round(ms, 2), "device": str(agent.device),
            "threads": torch.get_num_threads(), "precision": str(dtype).split(".")[-1],
            "cuda_graphs": bool(config.planner.cuda_graphs), "cpu": CPU["model"],
            "cpu_flags": CPU["flags"], "gflop_per_plan": round(gflop, 2),
            "gflops": round(gflop / ms * 1e3, 1), "bound_gflops": round(bound, 1),
            "fraction_of_bound": round(gflop / ms * 1e3 / bound, 3)}


_BOUNDS: dict[tuple[str, str], float] = {}


def matmul_gflops(dtype: torch.dtype, device: torch.device, size: int = 2048) -> float:
    """The arithmetic bound a plan is compared with: GFLOP/s of a large square matrix product
    in ``dtype`` on these threads (measured once per run; near the hardware's peak)."""
    key = (str(dtype), str(device))
    if key not in _BOUNDS:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        torch.mm(a, b)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.5 or runs < 3:
            torch.mm(a, b)
            runs += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        _BOUNDS[key] = 2 * size**3 * runs / (time.perf_counter() - start) / 1e9
    return _BOUNDS[key]


def bench_update(input_kind: str, args: argparse.Namespace, image_size: int = 84) -> dict:
    config = settings(Config(), input_kind, args).replace(**{"model.image_size": image_size})
    spec = spec_for(input_kind, image_size)
    agent = Agent(config, spec)
    rng = np.random.default_rng(0)
    agent.replay.add_offline([random_episode(spec, 25, i, rng) for i in range(20)])
    agent.replay.add_online([random_episode(spec, 25, 100 + i, rng) for i in range(4)])
    repeats = args.repeats if input_kind == "state" else max(3, args.repeats // 5)
    for _ in range(max(1, args.warmup // 2)):
        agent.update()
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        start = time.perf_counter()
        agent.update()  # sampling a balanced batch included
        if agent.device.type == "cuda":
            torch.cuda.synchronize(agent.device)
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats
    precision = str(agent.learner.dtype).split(".")[-1]
    return {"bench": "update", "input": input_kind, "batch": config.learner.batch_size,
            "image_size": config.model.image_size if input_kind == "pixels" else None,
            "updates_per_s": round(1.0 / statistics.median(times), 2),
            "device": str(agent.device), "threads": torch.get_num_threads(),
            "precision": precision, "cpu_bf16": cpu_bf16_native() or "none",
            "page_faults_per_update": round(faults)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"],
                        help="planner.precision (default: the config's)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="plan with CUDA graphs (planner.cuda_graphs; CUDA only)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", choices=["plan", "update"], help="run one kind only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.only != "update":
        for setting in ("paper", "fast"):
            for input_kind in ("state", "pixels"):
                print(json.dumps(bench_plan(setting, input_kind, args)), flush=True)
    if args.only != "plan":
        print(json.dumps(bench_update("state", args)), flush=True)
        for image_size in (84, 64):  # the paper's input size, and a smaller one
            print(json.dumps(bench_update("pixels", args, image_size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
