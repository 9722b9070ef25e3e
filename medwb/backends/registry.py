"""The backend registry: the one place that knows which backends exist.

A backend is one file in this folder holding two things: the runtime class that loads and
runs a model (``medwb.backends.protocol.Runtime``), and a :class:`Backend` entry registered with
``@register`` that tells the rest of medwb what it needs to know without importing any
heavy library: its name, the environment that runs it, the precisions it takes, how its
artifact is made, and the bytes per KV-cache element. Adding a backend is one new file plus
its module name in ``MODULES``; nothing outside ``medwb/backends`` compares backend names
(``medwb.models.architectures`` names them as data: which routes take each model family,
read here through ``variant_problems`` and ``routes_taking``).

The runtime protocol (what ``Backend.load`` returns) and the typed request, result and
record are in ``medwb.backends.protocol``, with "how to add a backend"; the child process
loads a backend through ``medwb.backends.loader``.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

from medwb.errors import MedwbError
from medwb.backends.protocol import ProbeResult, ProbeSpec, Runtime, Variant

# The backend files, in the order they are listed to users.
MODULES = ("pytorch", "bigdl", "bigdl_cli", "ipex", "openvino", "openvino_genai", "llamacpp")
# The variant every other one is compared to (agreement, quality vs FP32).
REFERENCE = {"backend": "pytorch", "precision": "fp32"}

_REGISTRY: dict[str, "Backend"] = {}


class Backend:
    """What medwb knows about one backend. Subclasses set the attributes and override the
    hooks that differ from these defaults (a checkpoint folder loaded as it is)."""
    name = ""
    env = "main"              # the environment (.venvs/<env>) whose Python runs it
    family = ""               # the record's ``backend`` field: pytorch, bigdl or openvino
    route = ""                # the record's ``route`` field
    precisions: tuple = ()    # what ``precision`` may be
    imports: tuple = ()       # imported before the load timer starts (load_s is loading, not imports)
    weights: tuple = ()       # the artifact's weight formats (a variant's ``weights``); () when none
    kv_cache_precisions: tuple = ()  # what ``kv_cache_precision`` may be; () when not settable
    kernel_builds = False     # bigdl's per-ISA kernel build applies (``kernel_build``)
    kernel_package = "bigdl.llm"  # which library's kernels (medwb.backends.toolchain.bigdl_kernels)
    stands_in_for = ""        # the default matrix runs it only where this backend's route does not
                              # take the model, at the same precision (ipex-llm for bigdl)
    serves = True             # can run as a long-lived app worker
    optional_env = False      # True: its environment may be missing or unbuilt here; a variant
                              # then becomes an error record (prepare says why), not a refusal
    kv_bytes: dict | float = 2  # bytes per KV element when the run does not report it (per precision)
    caveat = ""               # what a deployer must know even where it runs (ipex-llm: archived)
    peer = False              # True: what users would pick instead of the two routes (llama.cpp)
    measures_itself = False   # True: ``probe`` runs a one-shot native tool (no side-by-side timing)
    reads_torch_bin = False   # True: its converter reads only pytorch_model.bin (llm-convert)
    # Fidelity to FP32 (medwb.eval.fidelity) needs logits at every position (the runtime's
    # ``sequence_logits``). A backend without them names the backend that reads the same
    # artifact and gives them (``logits_via``), or says why it cannot be measured.
    logits_via = ""
    no_logits_reason = ""
    knobs: dict = {}          # name -> medwb.backends.knobs.Knob: the settings a variant may tune
                              # (``threads`` is every backend's)

    def load(self, spec: ProbeSpec) -> Runtime:
        """The runtime object for ``spec`` (model_path, precision, threads and the ``load``
        knobs, read with medwb.backends.knobs.value so that defaults apply)."""
        raise NotImplementedError

    def precision_problem(self, precision, where: str) -> str | None:
        if precision in self.precisions:
            return None
        return (f"{where}: precision {precision!r} is not supported by {self.name}; use one of "
                f"{', '.join(self.precisions)}")

    def model_problems(self, model_dir: Path) -> list[str]:
        """Why this checkpoint cannot take this backend (empty: it can)."""
        return []

    def prepare(self, model_dir: Path, variant: Variant, root: Path, cfg: dict, log=print) -> dict:
        """The artifact the variant loads: {"path", "bytes", optional extra probe "spec"
        keys}, or {"error"}. Built once under ``root`` (the artifacts folder of this model)."""
        from medwb.paths import checkpoint_bytes
        return {"path": model_dir, "bytes": checkpoint_bytes(model_dir)}

    def knob_problems(self, variant: Variant, model_dir: Path) -> list[str]:
        """Why the knobs a variant sets cannot apply to this checkpoint (values already checked)."""
        return []

    def process_env(self, spec: ProbeSpec) -> dict:
        """Variables to add to the environment of the process that loads ``spec`` (its
        ``process`` knobs); set before the process starts, as LD_PRELOAD must be."""
        return {}

    def given_artifact(self, path: Path) -> Path | None:
        """``path`` when it is an already-built artifact this backend loads as it is."""
        return None

    def probe(self, spec: ProbeSpec) -> ProbeResult | None:
        """A whole probe result when this backend measures itself (a one-shot native tool);
        None: medwb.bench.probe measures the runtime object."""
        return None

    def kernels_label(self, kernel_build: str | None) -> str | None:
        """The record's ``kernels`` field when it is known without running (bigdl builds)."""
        return None

    def weight_bits(self, variant: Variant) -> int | None:
        """Bits per weight of the variant's main layers (4, 8, 16, 32), to compare variants
        at the same bits; None when it cannot be told."""
        m = re.search(r"(\d+)", variant.get("weights") or variant.get("precision") or "")
        return int(m[1]) if m else None

    def kv_element_bytes(self, precision: str) -> float:
        return self.kv_bytes.get(precision, 2) if isinstance(self.kv_bytes, dict) else self.kv_bytes


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator: add one instance of ``cls`` to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls()
    return cls


def _load_all() -> dict[str, Backend]:
    if len(_REGISTRY) < len(MODULES):
        for module in MODULES:
            importlib.import_module(f"medwb.backends.{module}")
    return _REGISTRY


def names() -> list[str]:
    registry = _load_all()
    return [b.name for m in MODULES for b in registry.values() if b.__module__ == f"medwb.backends.{m}"]


def get(name, where: str = "backend") -> Backend:
    registry = _load_all()
    if name not in registry:
        raise MedwbError(f"{where}: backend {name!r} is unknown; use one of {', '.join(names())}")
    return registry[name]


def reference_for(model_dir) -> Variant:
    """The variant a model's others are compared with: PyTorch FP32, or, for a family whose
    folders PyTorch cannot run here (remote code written for older transformers), the one its
    registry entry names instead (llama.cpp's F32 GGUF: the folder's weights unchanged,
    checked against the folder's own code by tests/test_families.py)."""
    from medwb.models import architectures
    arch = architectures.known(model_dir) if model_dir is not None else None
    if arch is None or not arch.reference or not arch.route_problem(REFERENCE["backend"], trusted=True):
        return REFERENCE
    backend, precision = arch.reference.split(":")
    return {"backend": backend, "precision": precision}


def is_reference(variant: Variant, reference: Variant = REFERENCE) -> bool:
    """Whether ``variant`` is ``reference`` (``reference_for`` the model; PyTorch FP32)."""
    return all(variant.get(k) == v for k, v in reference.items()) and not variant.get("weights")
