"""keep_freed_memory is on for the learner on Linux and off when asked. What it buys (page
faults per update) is a benchmark figure: tools/bench_core.py prints it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = ("from tdmpc_ros.core.memory import keep_freed_memory; "
         "print(keep_freed_memory(), keep_freed_memory())")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
@pytest.mark.parametrize(("setting", "expected"), [("1", "True True"), ("0", "False False")])
def test_keep_freed_memory_is_set_once_and_can_be_turned_off(setting, expected) -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                            env={**os.environ, "TDMPC_KEEP_FREED_MEMORY": setting},
                            timeout=60, check=True)
    assert result.stdout.strip() == expected
