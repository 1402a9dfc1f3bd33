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
    with pytest.raises(ValueError, match="no variant .moon..*known: distractors, far, shifted"):
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


def test_distractors_appear_in_the_images_and_not_in_the_state() -> None:
    """lift's distractors variant: the same seed gives the same cube and the same states, step
    after step (the distractors are no obstacle), but other camera frames, with the distractors'
    own colours in them."""
    plain = XArmTaskEnv("lift", seed=3)
    distracted = XArmTaskEnv("lift", variant="distractors", seed=3)
    assert distracted.task_spec.distractors == 3
    first, _ = plain.reset(seed=3)
    second, _ = distracted.reset(seed=3)
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 4)).astype(np.float32)
    for action in actions:
        np.testing.assert_allclose(first["state"], second["state"], atol=1e-6)
        np.testing.assert_allclose(first["proprio"], second["proprio"], atol=1e-6)
        changed = np.abs(first["pixels"].astype(int) - second["pixels"].astype(int)).max(-1) > 40
        assert changed.sum() > 30, changed.sum()  # each distractor covers pixels of its own
        first, *_ = plain.step(action)
        second, *_ = distracted.step(action)
    # The distractors' colours: saturated blue (sphere) and yellow (cylinder) pixels, which the
    # plain scene does not have.
    pixels = second["pixels"].astype(int)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 90)
    yellow = (pixels[..., 0] > 150) & (pixels[..., 1] > 130) & (pixels[..., 2] < 80)
    plain_pixels = first["pixels"].astype(int)
    assert blue.sum() > 5 and yellow.sum() > 5, (blue.sum(), yellow.sum())
    assert ((plain_pixels[..., 2] > 150) & (plain_pixels[..., 0] < 90)).sum() < blue.sum()
    places = distracted.arm.distractor_positions()
    assert places.shape == (3, 3)
    cube = distracted.arm.object_position()
    assert all(np.linalg.norm(place[:2] - cube[:2]) >= 0.079 for place in places)
    with pytest.raises(ValueError, match="distractors must be a whole number"):
        with_variant(get_task("lift"), {"distractors": 9})
