"""Tuning knobs: the settings a variant may change from its backend's defaults.

A variant is ``backend:[weights/]precision``; knobs follow in brackets, written the way a
config file writes them: ``openvino-genai:int4/bf16[int4_group_size=64 int4_sym=true]``.
In a YAML config they are keys of the variant beside ``backend`` and ``precision``.

Each backend declares the knobs it takes (``Backend.knobs``, a name -> :class:`Knob`).
Where a knob acts is its *kind*:

- ``export``: the artifact. An IR exported with other settings is another artifact, cached
  under a name of its own (``artifact_suffix``), so no two settings ever share one.
- ``load``: the runtime's options when the model is loaded (OpenVINO properties).
- ``process``: the environment of the model's process, set before any library loads
  (bigdl-llm-init's OpenMP and allocator preloads).

A knob's ``default`` is what every run uses when the variant does not set it: the
benchmark, the evaluation and the apps' workers alike. ``None`` leaves the library's own
default. Where a default was chosen by measurement, ``why`` says where and by how much
(docs/compare-and-tuning.md, "Tuning"); ``medwb.bench.report.knob_effects`` reads a tuning run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import yaml
from medwb.backends.protocol import ProbeSpec, Variant

KINDS = ("export", "load", "process")


@dataclass(frozen=True)
class Knob:
    kind: str
    values: tuple = ()          # the allowed values; () with positive_int: any integer >= 1
    default: object = None      # None: the library's own default
    why: str = ""               # why this default (measured, or the library's own)
    weights: tuple = ()         # applies only to these weight formats (); all)
    positive_int: bool = False
    doc: str = ""

    def problem(self, name: str, value) -> str | None:
        if self.positive_int:
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                return None
            return f"{name} {value!r}: must be a positive integer"
        if any(value == v and type(value) is type(v) for v in self.values):
            return None
        return f"{name} {value!r}: use one of {', '.join(_text(v) for v in self.values)}"


# Every backend takes the thread count of its own process.
THREADS = Knob("load", positive_int=True, doc="threads of this variant (default: the run's `threads`)",
               why="one per core: on 2 cores one thread decoded 0.71x as fast for OpenVINO INT4 and bigdl "
                   "sym_int4 alike (p=0.017 and 0.0004; 2026-11-30, TinyLlama's shape, AMD EPYC with AVX2 "
                   "only, docs/compare-and-tuning.md \"Tuning\")")


def declared(entry) -> dict[str, Knob]:
    return {"threads": THREADS, **entry.knobs}


def names(entries) -> set[str]:
    return {n for e in entries for n in declared(e)}


def problems(entry, variant: Variant, where: str) -> list[str]:
    """What is wrong with the knobs a variant sets, each naming ``where``."""
    knobs, out = declared(entry), []
    for name in sorted(set(variant) - {"backend", "precision", "weights"}):
        knob = knobs.get(name)
        if knob is None:
            continue  # unknown to this backend: variant_problems names it
        if knob.weights and variant.get("weights") not in knob.weights:
            out.append(f"{where}: {name} applies only to weights {', '.join(knob.weights)}")
            continue
        p = knob.problem(name, variant[name])
        if p:
            out.append(f"{where}: {p}")
    return out


def unknown(entry, variant: Variant) -> list[str]:
    return sorted(set(variant) - {"backend", "precision", "weights"} - set(declared(entry)))


def value(entry, spec: ProbeSpec, name: str):
    """The knob's value for this variant or probe spec: its own, else the default."""
    knob = declared(entry)[name]
    v = spec.get(name)
    return knob.default if v is None else v


def settings(entry, spec: ProbeSpec, kind: str) -> dict:
    """Every knob of ``kind`` that applies to the spec's weights, defaults filled in."""
    return {n: value(entry, spec, n) for n, k in declared(entry).items()
            if k.kind == kind and (not k.weights or spec.get("weights") in k.weights)}


def effective(entry, variant: Variant) -> dict:
    """Every knob that applies to the variant, its own value or the default (threads aside:
    the run decides it)."""
    return {n: value(entry, variant, n) for n, k in declared(entry).items()
            if n != "threads" and (not k.weights or variant.get("weights") in k.weights)}


def set_in(variant: Variant) -> dict:
    """The knobs a variant sets itself, in name order."""
    return {k: variant[k] for k in sorted(variant) if k not in ("backend", "precision", "weights")
            and variant[k] is not None}


def written(knobs: dict) -> str:
    """``int4_group_size=64 int4_sym=true``: knobs as a label writes them."""
    return " ".join(f"{k}={_text(v)}" for k, v in knobs.items())


def suffix(variant: Variant) -> str:
    """``[int4_group_size=64 int4_sym=true]`` for the knobs a variant sets; "" for none."""
    knobs = set_in(variant)
    return f"[{written(knobs)}]" if knobs else ""


def parse_suffix(text: str) -> tuple[str, dict]:
    """``openvino-genai:int4/bf16[int4_sym=true]`` -> ("openvino-genai:int4/bf16", {"int4_sym": True})."""
    m = re.fullmatch(r"\s*([^\[]*?)\s*(?:\[([^\]]*)\])?\s*", text)
    base, inner = (m[1], m[2]) if m else (text, None)
    knobs = {}
    for item in (inner or "").split():
        name, _, raw = item.partition("=")
        knobs[name] = yaml.safe_load(raw) if raw else None
    return base, knobs


def _text(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)
