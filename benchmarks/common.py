"""Helpers the benchmark scripts share (they run as scripts: `python benchmarks/NAME.py`, this folder on sys.path)."""
import json
import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, log_path):
    """Run `cmd` from the repository root with its output in `log_path`; stop the benchmark if it fails;
    return the seconds it took."""
    start = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}; see {log_path}")
    return time.time() - start


def read(path):
    with open(path, encoding="utf-8") as fp:
        return json.load(fp)
