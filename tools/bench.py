"""`make bench`: run every benchmark script in tools/ (bench_*.py), one after the other.

Each prints its figures as one JSON object a line; this passes them through unchanged, so the
output of `make bench` can be read by a script. Figures are for comparing within one run: the
machines are shared and noisy.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    scripts = sorted(Path(__file__).parent.glob("bench_*.py"))
    if not scripts:
        print("no benchmark scripts yet", file=sys.stderr)
        return 1
    failed = []
    for script in scripts:
        print(f"# {script.name}", file=sys.stderr, flush=True)
        if subprocess.run([sys.executable, str(script)], check=False).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
