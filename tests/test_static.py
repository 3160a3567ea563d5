"""The code stays lint-clean (ruff) and type-checks under mypy --strict, as the house style asks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["emergency", "ambulance_gateway", "console", "firmware_sim", "bench"]  # bench: its figures go in the docs


def test_ruff_finds_nothing() -> None:
    """ruff check reports no problem anywhere in the repository."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_passes_on_the_packages() -> None:
    """mypy in strict mode finds no type error in the shipped packages, nor in the benchmarks."""
    result = subprocess.run([sys.executable, "-m", "mypy", *PACKAGES], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
