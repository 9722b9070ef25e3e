"""``medwb bench`` configuration: the defaults, a YAML/JSON file with keyword overrides, and
validation of the whole matrix before anything runs."""
from __future__ import annotations

import json

from medwb.backends import registry
from medwb.backends.variants import DEFAULT_MATRIX, label, resolve_model, routes_taking, variant_problems
from medwb.errors import MedwbError
from medwb.models import random_weights
from medwb.paths import model_config, read_settings_file

# The default matrix is the backends' (the evaluation reads the same one).
DEFAULT_VARIANTS = DEFAULT_MATRIX
DEFAULT_CONFIG = {
    "model": "demo",            # "demo", "shape:<name>" (random weights, speed only) or a checkpoint folder
    "token_pairs": [[32, 64], [512, 128]],
    "trials": 3,
    "threads": 0,               # 0: all cores
    "quality_cases": 4,         # held-out cases per workflow for quality (demo-like models); 0: none
    "bandwidth_mb": 1024,
    "compute_floor": True,      # time each runtime's kernel for the compute floor (medwb.bench.roofline)
    "kernel_build": "match",    # bigdl kernels: "match" (the CPU's own flags), "" (bigdl decides), a build
    "timeout_s": 1800,          # per variant
    "artifacts_dir": "",        # converted models (IRs, low-bit folders, native files); empty: the medwb cache
    "concurrent": 1,            # > 1: also time N copies of each variant decoding at once (the
                                # diagnosis app runs three), the cores shared out between them
    "rounds": 1,                # > 1: measure the whole matrix again, in the same order, this many
                                # times (tuning runs: drift of a shared VM then hits every variant alike)
    "variants": DEFAULT_VARIANTS,
}


def load_config(path=None, **overrides) -> dict:
    """DEFAULT_CONFIG, updated from a YAML/JSON file, then from keyword overrides (None: unset)."""
    cfg = json.loads(json.dumps(DEFAULT_CONFIG))
    if path:
        loaded = read_settings_file(path, "config file", "give a YAML file of settings (examples in configs/)")
        cfg.update(loaded)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(cfg) - set(DEFAULT_CONFIG))
    if unknown:
        raise MedwbError(f"config: unknown setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_CONFIG)}")
    return cfg


def parse_token_pairs(text: str) -> list[list[int]]:
    """``32-64,512-128`` -> [[32, 64], [512, 128]]."""
    try:
        return [[int(a), int(b)] for a, b in (p.split("-") for p in text.split(",") if p.strip())]
    except ValueError:
        raise MedwbError(f"token pairs {text!r}: write them as INPUT-OUTPUT, comma separated, e.g. 32-64,512-128") from None


def validate(cfg: dict) -> dict:
    """Every problem found before anything runs, each naming its entry; raises MedwbError.
    The default matrix is narrowed to the routes that take the model's family: ``variants``
    (what runs) and ``left_out`` ({label: why}) in the result."""
    from medwb.backends.toolchain.bigdl_kernels import BUILDS
    model = cfg["model"]
    if isinstance(model, str) and model.startswith("shape:") and model[6:] not in random_weights.SHAPES:
        raise MedwbError(f"model: shape {model[6:]!r} is unknown; use one of {', '.join(random_weights.SHAPES)}")
    # A shape's pytorch_model.bin only when llm-cli is asked for (or may be: the default matrix)
    chosen = cfg["variants"] if isinstance(cfg["variants"], list) and cfg["variants"] != DEFAULT_VARIANTS else None
    model_dir = resolve_model(model, with_bin=None if chosen is None else any(
        isinstance(v, dict) and v.get("backend") in registry.names() and registry.get(v["backend"]).reads_torch_bin
        for v in chosen))
    context = model_config(model_dir).get("max_position_embeddings", 2048)
    problems = []
    pairs = cfg["token_pairs"]
    if not isinstance(pairs, list) or not pairs:
        problems.append("token_pairs must be a non-empty list of [input, output] token counts")
        pairs = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, int) and x > 0 for x in pair)):
            problems.append(f"token_pairs[{i}] {pair!r}: must be [input, output], two positive integers")
        elif sum(pair) > context:
            problems.append(f"token_pairs[{i}] {list(pair)}: {sum(pair)} tokens exceed the model's context of "
                            f"{context} (max_position_embeddings); shorten the pair")
    positive = ("trials", "timeout_s", "concurrent", "rounds")
    for key in ("trials", "quality_cases", "threads", "bandwidth_mb", "timeout_s", "concurrent", "rounds"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < (1 if key in positive else 0):
            problems.append(f"{key} must be a {'positive' if key in positive else 'non-negative'} "
                            f"integer, got {cfg[key]!r}")
    if not isinstance(cfg["compute_floor"], bool):
        problems.append(f"compute_floor must be true or false, got {cfg['compute_floor']!r}")
    kb = cfg.get("kernel_build") or ""
    if kb and kb != "match" and kb not in BUILDS:
        problems.append(f"kernel_build {kb!r} is unknown; use '', 'match' or one of {', '.join(BUILDS)}")
    variants = cfg["variants"]
    if not isinstance(variants, list) or not variants:
        problems.append("variants must be a non-empty list")
        variants = []
    left_out: dict[str, str] = {}
    if variants == DEFAULT_VARIANTS:  # not chosen by the user: every route that takes the family
        variants, left_out = routes_taking(model_dir, variants)
    for i, v in enumerate(variants):
        problems += variant_problems(v, f"variants[{i}]", model_dir)
    if problems:
        # One line, as every user error (several problems: each named, separated by "; ").
        raise MedwbError("bad benchmark config: " + "; ".join(problems))
    labels = [label(v) for v in variants]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise MedwbError(f"variants: {', '.join(dup)} listed more than once")
    return {"model_dir": model_dir, "context": context, "speed_only": random_weights.is_speed_only(model_dir),
            "variants": variants, "left_out": left_out}
