"""Shared fixtures. The demo model is built once per machine (cached by recipe hash)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import medwb  # noqa: F401  (offline switches first)
from medwb import envs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    from medwb import demo_model
    return demo_model.ensure(progress=False)


def run_python(env: str, code: str, timeout: float = 600, extra_env: dict | None = None):
    """Run ``code`` with the interpreter of ``env``; return its last stdout line as JSON."""
    python = sys.executable if env == "main" else str(envs.python_of(env))
    assert Path(python).exists(), f"the {env} environment is missing ({python}): run `make setup`"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, **(extra_env or {})})
    assert proc.returncode == 0, f"{env} env failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
