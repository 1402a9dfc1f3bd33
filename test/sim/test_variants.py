"""Task variants: configuration that moves where the cube and target appear, and nothing else."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tdmpc_ros.sim.env import XArmTaskEnv
from tdmpc_ros.tasks import TASKS, VARIANT_FIELDS, get_task, known_variants, with_variant


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_has_a_shifted_variant_that_changes_only_placements(task: str) -> None:
    assert "shifted" in known_variants(task)
    base, variant = get_task(task), get_task(task, "shifted")
    assert variant.variant == "shifted" and base.variant == ""
    changed = {f.name for f in dataclasses.fields(base)
               if getattr(base, f.name) != getattr(variant, f.name)}
    assert changed and changed <= {*VARIANT_FIELDS, "variant"}, changed
    for region in ("object_region", "target_region"):
        if getattr(base, region) is not None and region in changed:
            assert getattr(variant, region) != getattr(base, region)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_resets_draw_from_the_variant_and_the_default_stays_the_training_distribution(
        task: str) -> None:
    base, variant = get_task(task), get_task(task, "shifted")
    where = "object" if base.uses_object else "target"
    region = f"{where}_region"
    envs = {"train": XArmTaskEnv(task, render_pixels=False, seed=3),
            "shifted": XArmTaskEnv(task, render_pixels=False, seed=3, variant="shifted")}
    try:
        for name, env in envs.items():
            spec = variant if name == "shifted" else base
            inside = 0
            for index in range(12):
                env.reset(seed=100 + index)
                position = env.positions()[f"{where}_pos"]
                box = getattr(spec, region)
                # x, y are drawn from the box (a cube then rests on the table)
                inside += box.contains(np.r_[position[:2], box.low[2]], tolerance=0.005)
            assert inside == 12, (name, task)
        # the same seed gives another scene on the variant, the same robot start
        envs["train"].reset(seed=7)
        envs["shifted"].reset(seed=7)
        a, b = envs["train"].positions(), envs["shifted"].positions()
        np.testing.assert_allclose(a["ee_pos"], b["ee_pos"], atol=1e-6)
        assert not np.allclose(a[f"{where}_pos"], b[f"{where}_pos"])
    finally:
        for env in envs.values():
            env.close()


def test_wrong_variants_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no variant 'moon'.*known: far, shifted"):
        get_task("lift", "moon")
    with pytest.raises(ValueError, match="unknown field 'max_step_m'"):
        with_variant(get_task("lift"), {"max_step_m": 0.1})
    with pytest.raises(ValueError, match="task 'lift' has no target_region"):
        with_variant(get_task("lift"), {"target_region": {"low": [0, 0, 0], "high": [1, 1, 1]}})
    with pytest.raises(ValueError, match="exceeds"):
        with_variant(get_task("lift"), {"object_region": {"low": [1, 0, 0], "high": [0, 1, 0]}})


def test_a_labs_own_variants_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("reach:\n  corner:\n    description: the far corner\n"
                    "    target_region: {low: [0.5, 0.15, 0.2], high: [0.55, 0.2, 0.25]}\n")
    spec = get_task("reach", f"{path}:corner")
    assert spec.variant == "corner"
    assert spec.target_region.low == (0.5, 0.15, 0.2)
    assert get_task("reach", "").target_region == TASKS["reach"].target_region
