"""Running a piece of Python in a child process under AddressSanitizer and UBSan (the
runtime's routines are checked this way: tests/test_gemm.py, tests/test_fft.py)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_clean(code: str) -> None:
    """Run ``code`` with libasan preloaded; fail on any report, or unless it prints "ok"."""
    cc = shlex.split(os.environ.get("CC", "").strip() or "cc")[0]
    found = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True,
                           check=False)
    libasan = found.stdout.strip()
    if not os.path.isabs(libasan) or not os.path.isfile(libasan):
        pytest.fail(f"the C compiler {cc!r} has no AddressSanitizer runtime (libasan)")
    env = {**os.environ, "LD_PRELOAD": libasan,
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:halt_on_error=1",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           }
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, errors="replace", timeout=600, check=False)
    report = f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "ERROR: AddressSanitizer" not in proc.stderr, report
    assert "runtime error:" not in proc.stderr, report
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", report
