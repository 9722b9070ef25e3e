"""Variants: a backend at a precision (and, for OpenVINO, an IR weight format) over a model.

Written ``backend:[weights/]precision`` (``openvino-genai:int4/bf16``, ``bigdl:sym_int4``),
with any tuning knobs it sets in brackets (``openvino-genai:int4/bf16[int4_sym=true]``,
see medwb.backends.knobs).
This module parses and checks them and makes the artifact each one loads (an IR, a
low-bit folder), once per model, in the medwb cache; the benchmark and the apps share it.
What differs per backend is asked of the registry, never decided here by name.
"""
from __future__ import annotations

import re
from pathlib import Path

from medwb.backends import knobs, registry
from medwb.errors import MedwbError
from medwb.paths import build_lock, cache_dir, check_model_dir
from medwb.backends.protocol import ProbeSpec, Variant


# The default matrix: every route at 16, 8 and 4 bits and the peer at 8 and 4, what the
# benchmark times and the main job's evaluation scores (so the recommendation has task
# evidence for every variant it ranks).
DEFAULT_MATRIX: list[Variant] = [
    {"backend": "pytorch", "precision": "fp32"},
    {"backend": "pytorch", "precision": "bf16"},
    {"backend": "bigdl", "precision": "sym_int4"},
    {"backend": "bigdl", "precision": "sym_int8"},
    {"backend": "bigdl-cli", "precision": "int4"},
    # bigdl-llm's successor, for the families bigdl-llm 2.4 cannot load (``stands_in_for``: run
    # only where bigdl's route does not take the model; name it in --variants to compare both).
    {"backend": "ipex-llm", "precision": "sym_int4"},
    {"backend": "ipex-llm", "precision": "sym_int8"},
    {"backend": "openvino-optimum", "weights": "int8", "precision": "bf16"},
    {"backend": "openvino-optimum", "weights": "int4", "precision": "bf16"},
    {"backend": "openvino-genai", "weights": "fp16", "precision": "f32"},
    {"backend": "openvino-genai", "weights": "int8", "precision": "bf16"},
    {"backend": "openvino-genai", "weights": "int4", "precision": "bf16"},
    # The peer users would pick instead, at the same bits as the routes' INT4 and INT8.
    {"backend": "llama.cpp", "precision": "q4_0"},
    {"backend": "llama.cpp", "precision": "q8_0"},
]


def label(v: Variant) -> str:
    weights = f"{v['weights']}/" if v.get("weights") else ""
    return f"{v['backend']}:{weights}{v['precision']}{knobs.suffix(v)}"


def base_label(v: Variant) -> str:
    """The label without knobs: the variant a tuning run compares each knob against."""
    return label({k: v.get(k) for k in ("backend", "weights", "precision")})


def parse_variants(text: str) -> list[Variant]:
    """``pytorch:fp32,openvino-genai:int4/bf16[int4_sym=true],bigdl:sym_int4`` -> variant dicts."""
    out = []
    for item in filter(None, (s.strip() for s in re.split(r",(?![^\[]*\])", text))):
        item, settings = knobs.parse_suffix(item)
        backend, _, rest = item.partition(":")
        weights, _, precision = rest.rpartition("/")
        out.append({"backend": backend, "precision": precision, **({"weights": weights} if weights else {}),
                    **settings})
    return out


def resolve_model(model: str, with_bin: bool | None = None, consent: bool = True) -> Path:
    """"demo" (or empty): the shipped demo model; "shape:<name>": a random-weight checkpoint
    of a real model's shape (speed only; ``with_bin``: also the pytorch_model.bin llm-convert
    reads, by default whenever llm-convert can take the shape); otherwise a local checkpoint
    folder, refused in one line when it runs its own code without the user's consent
    (``consent=False``: only describe it, as ``medwb doctor`` does)."""
    if model in ("", "demo"):
        from medwb.models import demo_model
        return demo_model.ensure()
    if model.startswith("shape:"):
        from medwb.backends.toolchain import llm_cli
        from medwb.models import random_weights
        name = model.split(":", 1)[1]
        # pytorch_model.bin too when llm-convert can take the shape (it reads only .bin).
        takes = llm_cli.takes_shape(random_weights.SHAPES.get(name, {}))
        return random_weights.ensure(name, with_bin=takes if with_bin is None else with_bin and takes)
    folder = check_model_dir(model, "model")
    from medwb.models import architectures
    arch = architectures.detect(folder)  # an architecture MedWB does not know: one line, naming those it does
    if consent and arch.remote_code and not architectures.remote_code_trusted():
        raise MedwbError(f"model '{model}' ({arch.name}): {architectures.CONSENT_NEEDED}")
    return folder


def route_problems(entry: registry.Backend, model_dir, trusted: bool | None = None) -> list[str]:
    """Why ``entry``'s route cannot take the checkpoint: its family's reason
    (medwb.models.architectures; ``trusted``: the user's consent to a folder's own code, None
    for this run's), else the folder's own (the backend's model_problems).
    A folder without config.json (an artifact, a placeholder) is checked where it is given."""
    from medwb.models import architectures
    if (Path(model_dir) / "config.json").exists():
        why = architectures.route_problem(model_dir, entry.name, trusted)
        if why:
            return [why]
    return entry.model_problems(Path(model_dir))


def routes_taking(model_dir: Path, variants: list[Variant]) -> tuple[list[Variant], dict[str, str]]:
    """The variants whose route takes the checkpoint (``route_problems``), and {label: why}
    for the rest: the default matrix narrowed to what can run."""
    kept, left = [], {}
    reference = registry.reference_for(model_dir)
    if reference is not registry.REFERENCE and not any(registry.is_reference(v, reference) for v in variants):
        variants = [reference] + list(variants)  # the family's FP32 stand-in, run first
    for v in variants:
        entry = registry.get(v["backend"])
        why = "; ".join(route_problems(entry, model_dir))
        if why:
            left[label(v)] = why
        else:
            kept.append(v)
    for v in list(kept):  # a stand-in runs only where the route it stands in for does not
        entry = registry.get(v["backend"])
        instead = {**v, "backend": entry.stands_in_for}
        if entry.stands_in_for and any(label(k) == label(instead) for k in kept):
            kept.remove(v)
            left[label(v)] = (f"{label(instead)} takes this model; {entry.name} runs by default only where "
                              f"{entry.stands_in_for} does not (name {label(v)} in --variants to compare both)")
    return kept, left


def variant_problems(v, where: str, model_dir: Path) -> list[str]:
    """What is wrong with one variant (backend, precision, weights, ...), each naming ``where``."""
    from medwb import envs
    if not isinstance(v, dict):
        return [f"{where} {v!r}: must be a mapping with backend and precision"]
    where = f"{where} ({label({'precision': '?', **v}) if 'backend' in v else v})"
    problems: list[str] = []
    try:
        entry = registry.get(v.get("backend"), where)
    except MedwbError as e:
        return problems + [str(e)]
    extra = knobs.unknown(entry, v)
    if extra:
        everywhere = knobs.names(registry.get(n) for n in registry.names())
        problems.append(f"{where}: " + "; ".join(
            f"{k} does not apply to {entry.name}" if k in everywhere else f"unknown key {k}" for k in extra)
            + f"; {entry.name} takes backend, precision{', weights' if entry.weights else ''} and the knobs "
            + ", ".join(sorted(knobs.declared(entry))))
    problems.append(entry.precision_problem(v.get("precision"), where))
    if entry.weights and v.get("weights") not in entry.weights:
        problems.append(f"{where}: weights {v.get('weights')!r} must be one of {', '.join(entry.weights)} "
                        "(the IR's weight format)")
    if not entry.weights and v.get("weights"):
        problems.append(f"{where}: 'weights' does not apply to {entry.name}")
    problems += [f"{where}: {p}" for p in route_problems(entry, model_dir)]
    problems += knobs.problems(entry, v, where)
    if not any(p for p in problems):
        problems += [f"{where}: {p}" for p in entry.knob_problems(v, Path(model_dir))]
    if not envs.available(entry.env) and not entry.optional_env:
        problems.append(f"{where}: the {entry.env} environment is missing ({envs.python_of(entry.env)}): "
                        "run `make setup`")
    return [p for p in problems if p]


def artifacts_dir(model_dir: Path, root: str = "") -> Path:
    """Converted models are kept per source model and reused across runs."""
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(Path(model_dir).resolve()).strip("/"))[-120:]
    return (Path(root) if root else cache_dir() / "bench") / key


def prepare(model_dir: Path, variants: list[Variant], cfg: dict, log=print) -> dict[str, dict]:
    """Per variant label: the artifact it loads ({"path", "bytes", ...}), made once, in a
    fresh process where a conversion needs one; a failure becomes that variant's
    {"error"} and the others carry on.

    One variant at a time per model folder across processes (a lock in its artifacts folder):
    a notebook's benchmark, an evaluation and the app's workers may ask for the same artifact
    at once, and two builders of one folder would convert it twice, the later one swapping its
    copy in under a reader, or fail when both rename into the empty slot."""
    root = artifacts_dir(model_dir, cfg.get("artifacts_dir", ""))
    out = {}
    for v in variants:
        with conversion_lock(root, log):
            out[label(v)] = registry.get(v["backend"]).prepare(Path(model_dir), v, root, cfg, log)
    return out


def conversion_lock(root: Path, log=print):
    """Held while one variant of the model whose artifacts live in ``root`` is prepared."""
    return build_lock(root / ".medwb-prepare.lock",
                      f"waiting: another process is converting the model whose artifacts are in {root}", log)


def load_spec(v: Variant, art: dict, threads: int, kernel_build: str | None) -> ProbeSpec:
    """What a child process needs to load variant ``v`` from its artifact ``art`` (``prepare``):
    the variant's own knobs (the backend fills in the defaults), the artifact's path and extra
    spec keys, threads, and bigdl's kernel build where it applies (the variant's own, else
    ``kernel_build``: a build name, "match" or None)."""
    entry = registry.get(v["backend"])
    return {**knobs.set_in(v), "backend": v["backend"], "model_path": str(art.get("path")),
            "precision": v["precision"], "weights": v.get("weights"), "threads": v.get("threads", threads),
            "kernel_build": (v.get("kernel_build", kernel_build) or None) if entry.kernel_builds else None,
            **art.get("spec", {})}
