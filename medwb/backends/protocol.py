"""The typed seams between the driver, the child process and each backend.

A measurement crosses three hands: the driver (``medwb.bench``, ``medwb.eval``, the app
workers) describes a :class:`Variant`, turns it into a :class:`ProbeSpec` written as JSON for
a fresh child process in the backend's environment, the child loads a :class:`Runtime` with
``medwb.backends.loader.load_in_child`` and returns a :class:`ProbeResult`, and the driver
keeps a :class:`Record` (one JSON line in ``<run>/records/<name>.jsonl``). These are
``TypedDict`` s, not classes of their own, so the JSON on disk stays exactly as before and old
run folders load and compare; a type checker and a reader see every field in one place.

How to add a backend
--------------------
1. One new file ``medwb/backends/<name>.py`` holding the runtime class (it satisfies
   :class:`Runtime` below) and a ``registry.Backend`` subclass registered with
   ``@registry.register``: its name, environment, precisions, and the hooks that differ from
   the defaults (``load(spec) -> Runtime``; ``prepare`` when it loads a converted artifact).
2. Its module name in ``registry.MODULES``.
Nothing else: the benchmark, the evaluation, the apps and the routes ask the registry, and
a test fails when code outside ``medwb/backends`` compares backend names.
"""
from __future__ import annotations

from typing import Callable, Protocol, TypedDict


class Variant(TypedDict, total=False):
    """One entry of a matrix (``backend:weights/precision`` plus knobs), as parsed by
    ``medwb.backends.variants.parse_variants``."""
    backend: str             # a name in medwb.backends.registry
    precision: str           # what the runtime computes in (fp32, bf16, sym_int4, int4 ...)
    weights: str             # the artifact's weight format, where it differs (e.g. int4 of int4/bf16)
    threads: int
    kernel_build: str        # bigdl's per-ISA kernel library, or "match"
    kv_cache_precision: str  # and any other knob of medwb.backends.knobs


class ProbeSpec(TypedDict, total=False):
    """What a child process is asked to do (``python -m medwb.bench.probe SPEC.json``, the
    eval worker, an app worker): the variant's load settings plus the work."""
    backend: str
    model_path: str
    precision: str
    weights: str | None
    threads: int
    kernel_build: str | None
    save_to: str                      # bigdl: write the low-bit folder after loading
    timing_prompt: str
    input_tokens: int                 # the timing prompt cut or repeated to exactly this many tokens
    max_new_tokens: int               # forced length of each timed run
    trials: int
    token_pairs: list[list[int]]      # [input, output] tokens per measurement
    pair_prompt: str
    prompts: list[str]                # greedy outputs for agreement and quality
    prompt_budgets: list[int]
    agreement_new_tokens: int
    logits: bool
    runtime_graph: bool
    barrier: dict                     # side-by-side start: {dir, n}
    out: str                          # eval worker: the answer cache it appends to
    samples: list[dict]               # eval worker: [{key, prompt, max_new_tokens}]


class TimedRun(TypedDict, total=False):
    """One forced-length greedy run (``Runtime.timed_generate``)."""
    ttft_ms: float
    tpot_ms: float | None
    n_new_tokens: int
    output_ids: list[int]
    timing: str                       # how it was timed (streamer, per-step clock, native tool)


class StreamResult(TypedDict):
    """``Runtime.stream``'s answer."""
    text: str | None                  # None: the chunks handed to on_text are the text
    n_new_tokens: int
    ttft_ms: float | None
    stopped: bool


class ProbeResult(TypedDict, total=False):
    """What a child returns: the measured fields a record copies (``medwb.bench.records``),
    the outputs, or only ``error`` (the child's own last words)."""
    error: str
    describe: dict                    # backend, precision, model_dir, threads, versions
    load_s: float
    import_s: float
    rss_mb_before_load: float
    peak_rss_mb_load: float
    peak_rss_mb: float
    rss_increase_mb: float
    ttft_ms: float
    tpot_ms: float | None
    pairs: list[dict]                 # per token pair: input_tokens, output_tokens and the timed fields
    output_ids: list[list[int]]
    last_logits: list
    texts: list[str]
    kernel_builds: dict
    machine_load: dict


class Record(TypedDict, total=False):
    """One line of ``<run>/records/<name>.jsonl``. ``record_type`` "run" heads a file (the
    configuration, CPU and bandwidth); "variant" lines carry a measured variant; the fields are
    those of ``medwb.bench.records.COLUMNS`` and ``medwb.provenance.IDENTITY``."""
    record_type: str                  # "run" | "variant" | "overhead" | ...
    created: str
    variant: str                      # the label, e.g. openvino-genai:int4/bf16
    backend: str                      # the backend's family (pytorch, bigdl, openvino, llamacpp)
    route: str
    precision: str
    input_tokens: int
    output_tokens: int
    ttft_ms: float
    tpot_ms: float | None
    peak_rss_mb: float
    size_bytes: int
    decode_floor_ms: float            # the bandwidth floor (medwb.bench.bandwidth)
    compute_floor_ms: float           # the kernels' floor (medwb.bench.roofline), where measured
    compute_floor_error: str          # why there is none
    binding_floor: str                # "bandwidth" | "compute": the larger, which pct_of_limit is against
    limit_ms: float
    kernel_fit: dict                  # per inner dimension K: per_matrix_us, ns_per_weight
    pct_of_limit: float | None
    quality: dict
    agreement_vs_fp32: dict
    error: str


class Runtime(Protocol):
    """What ``Backend.load`` returns; the probe, the eval worker, the routes and the app
    workers call exactly these. Optional extras (checked with ``hasattr``):
    ``save_low_bit(out_dir)``, ``compiled_properties()``, ``runtime_layer_types()``,
    ``kernels()`` (the kernels that really ran, read after inference),
    ``kernel_times(plan)`` (its matrix-vector kernel on cache-resident slices, for the compute
    floor: medwb.bench.roofline; MedwbError with the reason where it cannot be), and
    ``sequence_logits(ids) -> ndarray [len(ids), vocab]`` (every position's logits, teacher
    forced: what medwb.eval.fidelity compares with FP32; a backend without it says so in its
    registry entry, ``logits_via`` or ``no_logits_reason``)."""

    def encode(self, prompt: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def generate_ids(self, ids: list[int], max_new_tokens: int, force_length: bool = False) -> list[int]:
        """Greedy new tokens (``force_length`` ignores EOS, for speed runs)."""

    def timed_generate(self, ids: list[int], max_new_tokens: int) -> TimedRun: ...

    def stream(self, ids: list[int], max_new_tokens: int, on_text: Callable[[str], bool]) -> StreamResult:
        """Text handed out as it is decoded; ``on_text`` returning True stops it."""

    def last_token_logits(self, ids: list[int]) -> list[float] | None:
        """None: the backend hides logits."""

    def describe(self) -> dict: ...
