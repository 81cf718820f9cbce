"""Run every benchmark in this folder, one after another (`make bench`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Quick ones first, so a regression there shows before the heavy runs.
QUICK = ("bench_cli.py",)


def main() -> int:
    failed = []
    scripts = sorted(HERE.glob("bench_*.py"), key=lambda p: (p.name not in QUICK, p.name))
    for script in scripts:
        print(f"== {script.name} ==", flush=True)
        if subprocess.run([sys.executable, str(script)], check=False).returncode:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
