"""Variants: a backend at a precision (and, for OpenVINO, an IR weight format) over a model.

Written ``backend:[weights/]precision`` (``openvino-genai:int4/bf16``, ``bigdl:sym_int4``).
This module parses and checks them and makes the artifact each one loads (an IR, a
low-bit folder), once per model, in the medwb cache; the benchmark and the apps share it.
What differs per backend is asked of the registry, never decided here by name.
"""
from __future__ import annotations

import re
from pathlib import Path

from medwb.backends import registry
from medwb.errors import MedwbError
from medwb.paths import cache_dir, check_model_dir

VARIANT_KEYS = {"backend", "precision", "weights", "kernel_build", "kv_cache_precision"}


def label(v: dict) -> str:
    weights = f"{v['weights']}/" if v.get("weights") else ""
    return f"{v['backend']}:{weights}{v['precision']}"


def parse_variants(text: str) -> list[dict]:
    """``pytorch:fp32,openvino-genai:int4/bf16,bigdl:sym_int4`` -> variant dicts."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        backend, _, rest = item.partition(":")
        weights, _, precision = rest.rpartition("/")
        out.append({"backend": backend, "precision": precision, **({"weights": weights} if weights else {})})
    return out


def resolve_model(model: str) -> Path:
    """"demo" (or empty): the shipped demo model; "shape:<name>": a random-weight checkpoint
    of a real model's shape (speed only); otherwise a local checkpoint folder."""
    if model in ("", "demo"):
        from medwb.models import demo_model
        return demo_model.ensure()
    if model.startswith("shape:"):
        from medwb.models import random_weights
        return random_weights.ensure(model.split(":", 1)[1])
    return check_model_dir(model, "model")


def variant_problems(v, where: str, model_dir: Path) -> list[str]:
    """What is wrong with one variant (backend, precision, weights, ...), each naming ``where``."""
    from medwb import envs
    if not isinstance(v, dict):
        return [f"{where} {v!r}: must be a mapping with backend and precision"]
    where = f"{where} ({label({'precision': '?', **v}) if 'backend' in v else v})"
    problems: list[str] = []
    extra = sorted(set(v) - VARIANT_KEYS)
    if extra:
        problems.append(f"{where}: unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(VARIANT_KEYS))}")
    try:
        entry = registry.get(v.get("backend"), where)
    except MedwbError as e:
        return problems + [str(e)]
    problems.append(entry.precision_problem(v.get("precision"), where))
    if entry.weights and v.get("weights") not in entry.weights:
        problems.append(f"{where}: weights {v.get('weights')!r} must be one of {', '.join(entry.weights)} "
                        "(the IR's weight format)")
    if not entry.weights and v.get("weights"):
        problems.append(f"{where}: 'weights' does not apply to {entry.name}")
    problems += [f"{where}: {p}" for p in entry.model_problems(Path(model_dir))]
    kv = v.get("kv_cache_precision")
    if kv and kv not in entry.kv_cache_precisions:
        problems.append(f"{where}: kv_cache_precision {kv!r}: " + (
            f"use one of {', '.join(entry.kv_cache_precisions)}" if entry.kv_cache_precisions else
            f"{entry.name} has no settable KV-cache precision (OpenVINO backends have)"))
    if not envs.available(entry.env) and not entry.optional_env:
        problems.append(f"{where}: the {entry.env} environment is missing ({envs.python_of(entry.env)}): "
                        "run `make setup`")
    return [p for p in problems if p]


def artifacts_dir(model_dir: Path, root: str = "") -> Path:
    """Converted models are kept per source model and reused across runs."""
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(Path(model_dir).resolve()).strip("/"))[-120:]
    return (Path(root) if root else cache_dir() / "bench") / key


def prepare(model_dir: Path, variants: list[dict], cfg: dict, log=print) -> dict[str, dict]:
    """Per variant label: the artifact it loads ({"path", "bytes", ...}), made once, in a
    fresh process where a conversion needs one; a failure becomes that variant's
    {"error"} and the others carry on."""
    root = artifacts_dir(model_dir, cfg.get("artifacts_dir", ""))
    return {label(v): registry.get(v["backend"]).prepare(Path(model_dir), v, root, cfg, log) for v in variants}
