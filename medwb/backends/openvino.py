"""OpenVINO through optimum-intel (main env): ``OVModelForCausalLM`` with HF ``generate``.

The IR is stateful: the KV cache lives in the infer request between steps (the case
study's zero-copy KV cache), so ``generate`` only feeds the new token each step.
"""
from __future__ import annotations

from pathlib import Path

from medwb.backends import knobs
from medwb.backends.knobs import Knob
from medwb.backends.pytorch import PyTorchBackend, load_tokenizer
from medwb.backends.registry import Backend, register
from medwb.errors import MedwbError
from medwb.backends.toolchain import openvino_export as oe
from medwb.backends.toolchain.openvino_export import check_ir_dir
from medwb.backends.protocol import ProbeSpec, Variant
from medwb.sysinfo import default_threads

PRECISIONS = ("f32", "bf16")
# KV_CACHE_PRECISION values the CPU plugin takes (unset: the plugin's default).
KV_CACHE_PRECISIONS = ("f32", "bf16", "f16", "u8")

# What a variant may tune (medwb.backends.knobs). Export knobs make an IR of their own; both
# runtimes load the same IR with the same properties. Bytes read per token decide decode
# speed on a CPU: group size and symmetry set how many scales and zero points travel with
# the INT4 weights, ratio/all_layers/backup how many weights stay 8-bit (the output layer
# alone is about a tenth of a 1B model's reads), the KV-cache precision the bytes per
# cached token. Dynamic quantization of activations lets the plugin use integer dot products
# where the ISA has them (VNNI); pinning keeps a thread on its core.
INT4_ONLY = ("int4",)
MEASURED = "2026-11-30, TinyLlama's shape, AMD EPYC with AVX2 only, docs/compare-and-tuning.md \"Tuning\""
KNOBS = {
    "int4_group_size": Knob("export", (128, 64, 32, oe.CHANNEL_WISE), weights=INT4_ONLY,
                            why="the largest of 128/64/32 that divides every Linear input (optimum-cli's 128; "
                                "64 could not be told from it: 1.04x, p=0.54). "
                                "Channel-wise (-1) measured 1.40x faster (p=0.001; " + MEASURED + ") but is "
                                "not the default: one scale per row is known to cost LLM accuracy, which a "
                                "random-weight shape cannot show; evaluate it on your model (medwb eval)",
                            doc="INT4 group size (-1: one scale per output channel)"),
    "int4_sym": Knob("export", (False, True), default=oe.INT4_DEFAULTS["int4_sym"], weights=INT4_ONLY,
                     why="symmetric: 1.32x faster than asymmetric (p=0.002; " + MEASURED + "): no zero "
                         "point to subtract when the CPU plugin unpacks INT4 weights",
                     doc="symmetric INT4 (no zero points)"),
    "int4_ratio": Knob("export", (1.0, 0.9, 0.8), default=oe.INT4_DEFAULTS["int4_ratio"], weights=INT4_ONLY,
                       why="every layer in INT4: fewest bytes per token; 0.8 read 15% more and could not be "
                           "told from it (1.09x, p=0.54; " + MEASURED + ")",
                       doc="share of layers in INT4 (the rest in the backup precision)"),
    "int4_all_layers": Knob("export", (False, True), default=oe.INT4_DEFAULTS["int4_all_layers"],
                            weights=INT4_ONLY, why="NNCF's default (embedding and output layer in the backup "
                                                   "precision); INT4 there read 10% fewer bytes but decoded no "
                                                   "faster (0.99x; " + MEASURED + ")",
                            doc="embedding and output layer in INT4 too"),
    "int4_backup": Knob("export", ("int8_asym", "int8_sym"), default=oe.INT4_DEFAULTS["int4_backup"],
                        weights=INT4_ONLY, why="NNCF's default; int8_sym could not be told from it (1.06x, "
                                               "p=0.66; " + MEASURED + ")",
                        doc="precision of the layers kept out of INT4"),
    "kv_cache_precision": Knob("load", KV_CACHE_PRECISIONS, why="the CPU plugin's default; u8 set explicitly "
                               "made no difference (1.00x; " + MEASURED + ")",
                               doc="KV_CACHE_PRECISION"),
    "dynamic_quantization_group_size": Knob("load", (0, 32, 64, 128),
                                            why="the CPU plugin's default; 0 (off) looked 1.28x faster but "
                                                "the run could not tell it from noise (p=0.064; " + MEASURED + "); "
                                                "with AVX-512 and VNNI, off decoded 0.68x as fast and 128 0.84x "
                                                "(p<0.001; 2026-12-05, TinyLlama's shape, AMD EPYC AVX-512, "
                                                "docs/compare-and-tuning.md \"Tuning on AVX-512\")",
                                            doc="DYNAMIC_QUANTIZATION_GROUP_SIZE (0: off)"),
    "cpu_pinning": Knob("load", (True, False), why="the CPU plugin's default; off could not be told from it "
                        "(1.05x, p=0.66; " + MEASURED + ")", doc="ENABLE_CPU_PINNING"),
}
_PROPERTIES = {"kv_cache_precision": "KV_CACHE_PRECISION",
               "dynamic_quantization_group_size": "DYNAMIC_QUANTIZATION_GROUP_SIZE",
               "cpu_pinning": "ENABLE_CPU_PINNING"}


def cpu_properties(inference_precision: str, kv_cache_precision: str | None, threads: int,
                   tuned: dict | None = None) -> dict:
    """The CPU plugin's properties; ``tuned``: load knobs (None values: the plugin's default)."""
    if inference_precision not in PRECISIONS:
        raise MedwbError(f"inference_precision {inference_precision!r} is not supported on CPU: "
                         f"use {' or '.join(PRECISIONS)} (f16 silently falls back to bf16 here)")
    props = {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": "LATENCY",
             "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads)}
    for name, v in {**(tuned or {}), "kv_cache_precision": kv_cache_precision}.items():
        if name in _PROPERTIES and v is not None:
            props[_PROPERTIES[name]] = str(v).upper() if isinstance(v, bool) else str(v)
    return props


def load_properties(entry, spec: ProbeSpec) -> dict:
    """A probe spec's properties: its load knobs, defaults filled in."""
    tuned = knobs.settings(entry, spec, "load")
    return cpu_properties(spec["precision"], tuned.get("kv_cache_precision"), spec.get("threads") or default_threads(),
                          tuned)


def compiled_kernels(compiled, execute: bool = False) -> str:
    """The CPU plugin's kernel implementations for the matrix multiplications of a compiled
    model (the runtime graph's ``primitiveType``, e.g. brgemm_avx512_bf16), counted.

    The plugin picks them at the first inference ("undef" before): ``execute`` runs one
    4-token step of a stateful LLM IR on a private infer request first."""
    import collections

    import numpy as np
    if execute:
        ids = np.array([[1, 5, 6, 7]], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(4)[None],
                 "beam_idx": np.zeros(1, dtype=np.int32)}
        compiled.create_infer_request().infer({i.get_any_name(): feeds[i.get_any_name()] for i in compiled.inputs})
    kinds = collections.Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("FullyConnected", "MatMul"):
            kinds[info["primitiveType"].astype(str)] += 1
    return ", ".join(f"{k} x{n}" for k, n in kinds.most_common())


def kernel_times(plan: list[dict], props: dict, ir_dir: Path) -> list[dict]:
    """The CPU plugin's matrix-vector kernel timed for the compute floor (medwb.bench.roofline):
    per ``plan`` entry, r products of one [1, k] activation in one model, each with its own
    k x n weights (cache-resident together), compressed as the IR's weights are (its
    export manifest: int8 per channel, int4 with its group size and symmetry; NNCF's own
    decompression pattern, which the plugin fuses into its FullyConnected kernel), compiled
    with the variant's properties. Seconds per call."""
    import json
    if not (Path(ir_dir) / oe.MANIFEST).exists():
        raise MedwbError(f"the IR in '{ir_dir}' was not exported by MedWB (no {oe.MANIFEST}): its weight "
                         "compression is unknown, so its kernel cannot be reproduced for the compute floor")
    manifest = json.loads((Path(ir_dir) / oe.MANIFEST).read_text(encoding="utf-8"))
    fmt = manifest["weight_format"]
    if fmt not in ("int4", "int8"):  # before importing NNCF (2-4 s of a probe's start)
        raise MedwbError(f"the compute floor is measured for int4 and int8 IRs, not {fmt} weights")

    import nncf
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    from medwb.backends.measure import seconds_per_call
    core, rng = ov.Core(), np.random.default_rng(0)
    out = []
    for p in plan:
        # One input: each extra Parameter costs the request ~15 us per call, which the slope
        # over r would count as kernel work (measured).
        x = ops.parameter([1, p["k"]], np.float32, name="x")
        prods = [ops.matmul(x, ops.constant((rng.standard_normal((p["n"], p["k"])) * 0.02).astype(np.float32)),
                            False, True) for _ in range(p["r"])]
        model = ov.Model([prods[0] if p["r"] == 1 else ops.concat(prods, 1)], [x])
        if fmt == "int8":
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        else:
            mode = nncf.CompressWeightsMode.INT4_SYM if manifest["int4_sym"] else nncf.CompressWeightsMode.INT4_ASYM
            model = nncf.compress_weights(model, mode=mode, group_size=manifest["int4_group_size"], ratio=1.0,
                                          all_layers=True)
        compiled = core.compile_model(model, "CPU", {k: v for k, v in props.items() if k != "CACHE_DIR"})
        request, feed = compiled.create_infer_request(), {0: rng.standard_normal((1, p["k"])).astype(np.float32)}
        out.append({**p, "s": seconds_per_call(lambda r=request, f=feed: r.infer(f))})
    return out


class OptimumOVBackend(PyTorchBackend):
    name = "openvino-optimum"

    def __init__(self, model, tokenizer, model_dir: Path, precision: str, threads: int, props: dict):
        super().__init__(model, tokenizer, model_dir, precision, threads)
        self.props = props

    @classmethod
    def load(cls, ir_dir, inference_precision: str = "f32", kv_cache_precision: str | None = None,
             threads: int | None = None, parameter: str = "ir_dir", props: dict | None = None) -> "OptimumOVBackend":
        from optimum.intel import OVModelForCausalLM

        ir_dir = check_ir_dir(ir_dir, parameter)
        threads = threads or default_threads()
        # CACHE_DIR "": no compiled-model cache written next to the IR by optimum.
        props = {**(props or cpu_properties(inference_precision, kv_cache_precision, threads)), "CACHE_DIR": ""}
        model = OVModelForCausalLM.from_pretrained(str(ir_dir), export=False, ov_config=props,
                                                   local_files_only=True)
        return cls(model, load_tokenizer(ir_dir), ir_dir, inference_precision, threads, props)

    def compiled_properties(self) -> dict:
        """What the compiled model reports back (a hint is a request, this is the answer)."""
        compiled = self.model.request.get_compiled_model()
        out = {}
        for key in ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "INFERENCE_NUM_THREADS",
                    "PERFORMANCE_HINT", "NUM_STREAMS", "DYNAMIC_QUANTIZATION_GROUP_SIZE", "ENABLE_CPU_PINNING"):
            try:
                out[key] = str(compiled.get_property(key))
            except Exception as e:  # a property this plugin does not expose
                out[key] = f"n/a ({type(e).__name__})"
        return out

    def runtime_layer_types(self) -> dict[str, int]:
        """Layer types of the graph the CPU plugin really runs, counted. After compilation
        the plugin has fused attention into ScaledDotProductAttention (reading the KV cache
        in place in a stateful IR) and rotary embedding into RoPE."""
        import collections
        runtime = self.model.request.get_compiled_model().get_runtime_model()
        counts = collections.Counter(op.get_rt_info()["layerType"].astype(str) for op in runtime.get_ops())
        return dict(counts.most_common())

    def kernels(self) -> str:
        return compiled_kernels(self.model.request.get_compiled_model())

    def kernel_times(self, plan: list[dict]) -> list[dict]:
        return kernel_times(plan, self.props, self.model_dir)

    def describe(self) -> dict:
        import importlib.metadata
        info = super().describe()
        info.update(backend=self.name, precision=self.dtype, requested=self.props,
                    openvino=importlib.metadata.version("openvino"),
                    optimum_intel=importlib.metadata.version("optimum-intel"))
        return info


def ir_weights_read(ir_dir: Path) -> int:
    """Bytes one generated token reads from the IR's weights: every constant in the
    element type the IR keeps it (int4 IRs keep some layers int8, scales f16), except the
    token-embedding table and its scale and zero point, of which one row each is read; an IR
    with no lm_head constant ties the two (the table is the output layer too), so the table
    is read whole. From the XML's own offsets and sizes (no weights loaded)."""
    import xml.etree.ElementTree as ET
    consts: dict[int, tuple[str, int, str]] = {}
    for layer in ET.parse(Path(ir_dir) / "openvino_model.xml").getroot().iter("layer"):
        data = layer.find("data")
        if layer.get("type") == "Const" and data is not None and data.get("size"):
            consts.setdefault(int(data.get("offset")), (layer.get("name", ""), int(data.get("size")), data.get("shape", "")))
    from medwb.models.architectures import weight_names
    table, output = weight_names(ir_dir)
    read = 0
    tied = not any(output in name for name, _, _ in consts.values())
    for name, size, shape in consts.values():
        if table in name and shape and not tied:
            rows = int(shape.split(",")[0])
            read += size // rows if rows else size
        else:
            read += size
    return read


@register
class OpenVINOOptimum(Backend):
    """optimum-intel over a stateful IR; openvino-genai (its own file) shares the IR and
    these settings."""
    name, family, route = "openvino-optimum", "openvino", "openvino-optimum"
    precisions = PRECISIONS
    imports = ("torch", "transformers", "optimum.intel")
    kv_cache_precisions = KV_CACHE_PRECISIONS
    knobs = KNOBS
    # kv_bytes stays the default 2: the record reads the compiled KV_CACHE_PRECISION where
    # the runtime reports it (optimum does, genai does not).

    @property
    def weights(self) -> tuple:
        from medwb.backends.toolchain.openvino_export import WEIGHT_FORMATS
        return WEIGHT_FORMATS

    def load(self, spec: ProbeSpec):
        return OptimumOVBackend.load(spec["model_path"], spec["precision"], threads=spec.get("threads"),
                                     props=load_properties(self, spec))

    def knob_problems(self, variant: Variant, model_dir: Path) -> list[str]:
        group = variant.get("int4_group_size")
        try:
            oe.check_group_size(model_dir, group) if group else None
        except MedwbError as e:
            return [str(e)]
        return []

    def prepare(self, model_dir: Path, variant: Variant, root: Path, cfg: dict, log=print) -> dict:
        # One IR per weight format and export settings, exported once in a fresh process and
        # shared by both runtimes.
        import json

        from medwb import envs
        settings = (oe.int4_settings(model_dir, knobs.settings(self, variant, "export"))
                    if variant["weights"] == "int4" else None)
        ir = root / oe.ir_name(variant["weights"], settings)
        if not oe.is_complete(ir):
            log(f"exporting {variant['weights']} IR to {ir} ...")
        res = envs.query_json(self.env, ["-m", oe.__name__, str(model_dir), str(ir), variant["weights"]]
                              + ([json.dumps(settings)] if settings else []),
                              timeout=cfg.get("timeout_s", 1800), raise_error=False)
        if "error" in res:
            return {"error": res["error"]}
        return {"path": ir, "bytes": res["ir_bytes"], "export_s": res["export_s"],
                "weights_read_bytes": ir_weights_read(ir), "export_settings": settings}

    def given_artifact(self, path: Path) -> Path | None:
        return check_ir_dir(path, "model path") if (path / "openvino_model.xml").exists() else None
