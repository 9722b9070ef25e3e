"""The two Python environments and their Jupyter kernels.

bigdl-llm 2.4.0 needs transformers 4.31 while optimum-intel needs >= 4.51, so the
workbench keeps two virtual environments (created by `make setup`):

| env   | path           | kernel       | holds                                          |
|-------|----------------|--------------|------------------------------------------------|
| main  | .venvs/main    | medwb-main   | OpenVINO, optimum-intel, genai, Jupyter, papermill |
| bigdl | .venvs/bigdl   | medwb-bigdl  | bigdl-llm[all] 2.4.0, transformers 4.31, langchain |
| ipex  | .venvs/ipex    | (none)       | ipex-llm 2.2.0 (bigdl-llm's successor), transformers 4.47 |
| llamacpp | .venvs/llamacpp | (none)    | llama-cpp-python built for this CPU (the peer variant) |

Both kernels are registered inside the main env (its Jupyter and papermill find them).
$MEDWB_MAIN_PYTHON / $MEDWB_BIGDL_PYTHON point elsewhere (e.g. conda envs).
"""
from __future__ import annotations

import os
from pathlib import Path

from medwb.errors import MedwbError
from medwb.paths import REPO_DIR, VENVS_DIR

KERNELS = {"main": "medwb-main", "bigdl": "medwb-bigdl"}
# ipex and llamacpp have no kernel: only the benchmark's probes and the workers run there.
ENVS = (*KERNELS, "ipex", "llamacpp")


def python_of(env: str) -> Path:
    """The interpreter of ``env`` (one of ENVS)."""
    if env not in ENVS:
        raise MedwbError(f"environment {env!r} is unknown: use one of {', '.join(ENVS)}")
    override = os.environ.get(f"MEDWB_{env.upper()}_PYTHON")
    return Path(override) if override else VENVS_DIR / env / "bin" / "python"


def available(env: str) -> bool:
    return python_of(env).exists()


def require(env: str) -> Path:
    """The interpreter of ``env``, or an error saying how to create it."""
    python = python_of(env)
    if not python.exists():
        raise MedwbError(f"the {env} environment is missing ({python}): run `make setup`")
    return python


def query_json(env: str, module_args: list[str], timeout: float = 300, raise_error: bool = True):
    """Run a medwb module in ``env`` that hands back JSON with ``medwb.child.write_result``
    (a result file, never stdout). With ``raise_error=False`` a failure comes back as
    ``{"error": "..."}``."""
    from medwb import child
    try:
        return child.run([str(require(env)), *module_args], timeout=timeout, cwd=REPO_DIR,
                         what=f"{env} environment: {' '.join(module_args)}")
    except child.ChildError as e:
        if raise_error:
            raise
        return {"error": str(e)}
