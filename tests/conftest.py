"""Shared fixtures. The demo model is built once per machine (cached by recipe hash)."""
import os
import sys
from pathlib import Path

import pytest

import medwb  # noqa: F401  (offline switches first)
from medwb import envs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    from medwb.models import demo_model
    return demo_model.ensure()


def run_python(env: str, code: str, timeout: float = 600, extra_env: dict | None = None):
    """Run ``code`` with the interpreter of ``env``; return what it hands back with
    ``medwb.child.write_result`` (a result file, whatever the libraries print)."""
    from medwb import child
    python = sys.executable if env == "main" else str(envs.python_of(env))
    assert Path(python).exists(), f"the {env} environment is missing ({python}): run `make setup`"
    return child.run([python, "-c", code], timeout=timeout, cwd=REPO,
                     env={**os.environ, **(extra_env or {})}, what=f"{env} env test code")
