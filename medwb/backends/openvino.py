"""OpenVINO through optimum-intel (main env): ``OVModelForCausalLM`` with HF ``generate``.

The IR is stateful: the KV cache lives in the infer request between steps (the case
study's zero-copy KV cache), so ``generate`` only feeds the new token each step.
"""
from __future__ import annotations

import os
from pathlib import Path

from medwb.backends.pytorch import PyTorchBackend, load_tokenizer
from medwb.backends.registry import Backend, register
from medwb.errors import MedwbError
from medwb.backends.toolchain.openvino_export import check_ir_dir

PRECISIONS = ("f32", "bf16")
# KV_CACHE_PRECISION values the CPU plugin takes (unset: the plugin's default).
KV_CACHE_PRECISIONS = ("f32", "bf16", "f16", "u8")


def cpu_properties(inference_precision: str, kv_cache_precision: str | None, threads: int) -> dict:
    if inference_precision not in PRECISIONS:
        raise MedwbError(f"inference_precision {inference_precision!r} is not supported on CPU: "
                         f"use {' or '.join(PRECISIONS)} (f16 silently falls back to bf16 here)")
    props = {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": "LATENCY",
             "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads)}
    if kv_cache_precision:
        props["KV_CACHE_PRECISION"] = kv_cache_precision
    return props


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


class OptimumOVBackend(PyTorchBackend):
    name = "openvino-optimum"

    def __init__(self, model, tokenizer, model_dir: Path, precision: str, threads: int, props: dict):
        super().__init__(model, tokenizer, model_dir, precision, threads)
        self.props = props

    @classmethod
    def load(cls, ir_dir, inference_precision: str = "f32", kv_cache_precision: str | None = None,
             threads: int | None = None, parameter: str = "ir_dir") -> "OptimumOVBackend":
        from optimum.intel import OVModelForCausalLM

        ir_dir = check_ir_dir(ir_dir, parameter)
        threads = threads or os.cpu_count() or 1
        # CACHE_DIR "": no compiled-model cache written next to the IR by optimum.
        props = {**cpu_properties(inference_precision, kv_cache_precision, threads), "CACHE_DIR": ""}
        model = OVModelForCausalLM.from_pretrained(str(ir_dir), export=False, ov_config=props,
                                                   local_files_only=True)
        return cls(model, load_tokenizer(ir_dir), ir_dir, inference_precision, threads, props)

    def compiled_properties(self) -> dict:
        """What the compiled model reports back (a hint is a request, this is the answer)."""
        compiled = self.model.request.get_compiled_model()
        out = {}
        for key in ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "INFERENCE_NUM_THREADS",
                    "PERFORMANCE_HINT", "NUM_STREAMS"):
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
    token-embedding table and its scale and zero point, of which one row each is read.
    From the XML's own offsets and sizes (no weights loaded)."""
    import xml.etree.ElementTree as ET
    consts: dict[int, tuple[str, int, str]] = {}
    for layer in ET.parse(Path(ir_dir) / "openvino_model.xml").getroot().iter("layer"):
        data = layer.find("data")
        if layer.get("type") == "Const" and data is not None and data.get("size"):
            consts.setdefault(int(data.get("offset")), (layer.get("name", ""), int(data.get("size")), data.get("shape", "")))
    read = 0
    for name, size, shape in consts.values():
        if "embed_tokens.weight" in name and shape:
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
    # kv_bytes stays the default 2: the record reads the compiled KV_CACHE_PRECISION where
    # the runtime reports it (optimum does, genai does not).

    @property
    def weights(self) -> tuple:
        from medwb.backends.toolchain.openvino_export import WEIGHT_FORMATS
        return WEIGHT_FORMATS

    def load(self, spec: dict):
        return OptimumOVBackend.load(spec["model_path"], spec["precision"], spec.get("kv_cache_precision"),
                                     spec.get("threads"))

    def prepare(self, model_dir: Path, variant: dict, root: Path, cfg: dict, log=print) -> dict:
        # One IR per weight format, exported once in a fresh process and shared by both runtimes.
        from medwb import envs
        from medwb.backends.toolchain import openvino_export as oe
        ir = root / f"openvino-{variant['weights']}"
        if not oe.is_complete(ir):
            log(f"exporting {variant['weights']} IR to {ir} ...")
        res = envs.query_json(self.env, ["-m", oe.__name__, str(model_dir), str(ir), variant["weights"]],
                              timeout=cfg.get("timeout_s", 1800), raise_error=False)
        if "error" in res:
            return {"error": res["error"]}
        return {"path": ir, "bytes": res["ir_bytes"], "export_s": res["export_s"],
                "weights_read_bytes": ir_weights_read(ir)}

    def given_artifact(self, path: Path) -> Path | None:
        from medwb.backends.toolchain.openvino_export import check_ir_dir
        return check_ir_dir(path, "model path") if (path / "openvino_model.xml").exists() else None
