"""Export a local checkpoint to OpenVINO IR (main env), the way ``optimum-cli export
openvino`` does it, with the checks a hospital IT engineer needs around it.

- Weight formats fp16, int8 (per-channel) and int4 (grouped; the group size must divide
  every Linear input size, else NNCF fails with InvalidGroupSizeError).
- Stateful by default: the KV cache stays inside the infer request between steps.
- The tokenizer is converted to openvino_tokenizer.xml / openvino_detokenizer.xml, which
  openvino-genai needs.
- Idempotent and atomic: an IR folder counts as complete only with its manifest (written
  last); a partial one is rebuilt, and exports are written to a temp folder, then renamed.
- Refuses to start when the machine cannot hold the export (estimated from the checkpoint).
"""
from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path

from medwb.errors import MedwbError
from medwb.paths import atomic_dir, checkpoint_bytes, check_model_dir, linear_input_dims, write_json_atomic

WEIGHT_FORMATS = ("fp16", "int8", "int4")
GROUP_SIZES = (128, 64, 32)
CHANNEL_WISE = -1  # NNCF's group size for one scale per output channel
# INT4 compression settings (NNCF's, as optimum-cli passes them) and medwb's defaults; the
# benchmark's knobs of the same names (medwb.backends.openvino) change them per variant.
# Symmetric by default: measured 1.32x faster than asymmetric (p = 0.002) in decode, TinyLlama's
# shape, AMD EPYC with AVX2 only, 2026-11-30 (docs/compare-and-tuning.md, "Tuning").
INT4_DEFAULTS = {"int4_group_size": None,   # None: the largest of GROUP_SIZES dividing every Linear input
                 "int4_sym": True, "int4_ratio": 1.0, "int4_all_layers": False, "int4_backup": "int8_asym"}
MANIFEST = "medwb_export.json"
IR_FILES = ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml",
            "openvino_tokenizer.bin", "openvino_detokenizer.xml", "openvino_detokenizer.bin",
            "config.json")
# Export holds the torch weights (in the checkpoint's dtype: optimum-intel loads a BF16 one
# in BF16), the traced OV model and the compressed copy at once: about 3x the FP32
# checkpoint was the peak seen for optimum-intel exports, and 2.7x for Llama-3.2-3B's BF16
# shape at INT4 (17.6 GB peak RSS, AMD EPYC, 2026-12-06).
EXPORT_RAM_FACTOR = 3.0


def default_group_size(model_dir: Path) -> int:
    """The largest of 128/64/32 that divides every Linear input size."""
    dims = linear_input_dims(model_dir)
    for g in GROUP_SIZES:
        if all(d % g == 0 for d in dims.values()):
            return g
    raise MedwbError(f"model_path '{model_dir}': no int4 group size of {GROUP_SIZES} divides {dims}")


def check_group_size(model_dir: Path, group_size: int) -> int:
    if group_size == CHANNEL_WISE:
        return group_size
    dims = linear_input_dims(model_dir)
    bad = {k: v for k, v in dims.items() if group_size <= 0 or v % group_size}
    if group_size <= 0 or bad:
        ok = [g for g in (256,) + GROUP_SIZES + (16,) if all(d % g == 0 for d in dims.values())]
        raise MedwbError(f"int4_group_size {group_size} does not divide {bad or dims}; "
                         f"use one of {ok} (or leave it empty for the default)")
    return group_size


def check_memory(model_dir: Path) -> dict:
    from medwb.sysinfo import check_ram
    return check_ram(int(checkpoint_bytes(model_dir) * EXPORT_RAM_FACTOR), f"exporting '{model_dir}'",
                     f"{EXPORT_RAM_FACTOR:g}x the checkpoint", "free memory or export on a larger machine")


def int4_settings(model_dir: Path, given: dict | None = None) -> dict:
    """The INT4 settings an export uses: ``given`` over INT4_DEFAULTS, the group size
    resolved for this checkpoint (checked to divide every Linear input size)."""
    unknown = sorted(set(given or {}) - set(INT4_DEFAULTS))
    if unknown:
        raise MedwbError(f"int4 settings: unknown {', '.join(unknown)}; known: {', '.join(INT4_DEFAULTS)}")
    s = {**INT4_DEFAULTS, **{k: v for k, v in (given or {}).items() if v is not None}}
    s["int4_group_size"] = (check_group_size(model_dir, int(s["int4_group_size"])) if s["int4_group_size"]
                            else default_group_size(model_dir))
    return s


def ir_name(weight_format: str, settings: dict | None = None) -> str:
    """The IR folder's name: INT4 IRs of other settings are other artifacts, never shared."""
    if weight_format != "int4":
        return f"openvino-{weight_format}"
    s = settings or {}
    group = "cw" if s["int4_group_size"] == CHANNEL_WISE else f"g{s['int4_group_size']}"
    return (f"openvino-int4-{group}-{'sym' if s['int4_sym'] else 'asym'}-r{s['int4_ratio']:g}"
            f"-{'all' if s['int4_all_layers'] else s['int4_backup']}")


def cli_command(model_dir, out_dir, weight_format: str, settings: dict | None = None,
                stateful: bool = True) -> str:
    """The optimum-cli command that does the same export, for the reader to re-run."""
    cmd = ["optimum-cli", "export", "openvino", "--model", str(model_dir),
           "--task", "text-generation-with-past", "--weight-format", weight_format]
    if weight_format == "int4":
        s = settings
        cmd += ["--group-size", str(s["int4_group_size"]), "--ratio", f"{s['int4_ratio']:g}"]
        cmd += ["--sym"] if s["int4_sym"] else []
        cmd += ["--all-layers"] if s["int4_all_layers"] else ["--backup-precision", s["int4_backup"]]
    if not stateful:
        cmd += ["--disable-stateful"]
    return " ".join(cmd + [str(out_dir)])


def is_complete(ir_dir: Path) -> bool:
    ir_dir = Path(ir_dir)
    return (ir_dir / MANIFEST).exists() and all((ir_dir / f).exists() and (ir_dir / f).stat().st_size > 0
                                                 for f in IR_FILES)


def check_ir_dir(ir_dir, parameter: str = "ir_dir") -> Path:
    """An IR folder a runtime can load, or a MedwbError naming what is missing."""
    p = Path(ir_dir)
    if not p.is_dir():
        raise MedwbError(f"{parameter} '{p}' is not a directory")
    missing = [f for f in ("openvino_model.xml", "openvino_model.bin") if not (p / f).exists()]
    if missing:
        raise MedwbError(f"{parameter} '{p}' is missing {', '.join(missing)}: re-export it "
                         "(an IR needs both the .xml graph and the .bin weights)")
    return p


def export(model_path, out_dir, weight_format: str, int4_group_size: int | None = None,
           int4_sym: bool | None = None, stateful: bool = True, force: bool = False,
           int4: dict | None = None) -> dict:
    """Export one weight format to ``out_dir``; skipped when a complete IR is already there.
    INT4 settings: ``int4`` (names of INT4_DEFAULTS), or the two common ones as arguments."""
    model_dir = check_model_dir(model_path)
    if weight_format not in WEIGHT_FORMATS:
        raise MedwbError(f"weight_formats: {weight_format!r} is unknown; use {', '.join(WEIGHT_FORMATS)}")
    settings = None
    if weight_format == "int4":
        settings = int4_settings(model_dir, {**(int4 or {}), **({"int4_group_size": int4_group_size}
                                 if int4_group_size else {}), **({"int4_sym": int4_sym} if int4_sym is not None else {})})
    out_dir = Path(out_dir)
    command = cli_command(model_dir, out_dir, weight_format, settings, stateful)
    if is_complete(out_dir) and not force:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        return {**manifest, "skipped": True}
    memory = check_memory(model_dir)

    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    started = time.perf_counter()
    with atomic_dir(out_dir, overwrite=True) as tmp:
        # Step 1, as optimum-cli: export (fp16 weights, or fp32 to compress next).
        with _quiet_tracing():
            main_export(str(model_dir), tmp, task="text-generation-with-past",
                        ov_config=OVConfig(dtype="fp16" if weight_format == "fp16" else "fp32"),
                        stateful=stateful, convert_tokenizer=True, library_name="transformers")
        # Step 2, as optimum-cli: weight compression (NNCF). main_export alone ignores a
        # quantization config and silently leaves FP32 weights, so it is done here and
        # checked below.
        if weight_format in ("int8", "int4"):
            compress_ir(tmp, weight_format, settings)
        weight_types = weight_element_types(tmp)
        sym = bool(settings and settings["int4_sym"])
        expected = {"fp16": "f16", "int8": "u8", "int4": "u4" if not sym else "i4"}[weight_format]
        if expected not in weight_types:
            raise MedwbError(f"export to {weight_format} produced weights of types {sorted(weight_types)}, "
                             f"no {expected}: compression did not apply; nothing was written")
        missing = [f for f in IR_FILES if not (tmp / f).exists()]
        if missing:
            raise MedwbError(f"export of '{model_dir}' produced no {', '.join(missing)} "
                             "(tokenizer conversion may have failed): nothing was written")
        manifest = {"model_path": str(model_dir), "weight_format": weight_format,
                    "int4_group_size": settings and settings["int4_group_size"],
                    "int4_sym": settings and settings["int4_sym"], "int4_settings": settings,
                    "stateful": stateful, "export_s": round(time.perf_counter() - started, 2),
                    "weight_element_types": weight_types,
                    "ir_bytes": sum((tmp / f).stat().st_size for f in ("openvino_model.xml", "openvino_model.bin")),
                    "command": command, "memory_check": memory}
        write_json_atomic(tmp / MANIFEST, manifest)
    return {**manifest, "skipped": False}


@contextlib.contextmanager
def _quiet_tracing():
    """Tracing the model emits a TracerWarning per data-dependent branch, deprecation
    notices and a weight-loading progress bar; they say nothing about this export, so the
    notebook output drops them."""
    import torch
    import transformers
    hf_logging = transformers.utils.logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # deprecation notices from inside optimum's tracing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            yield
        finally:
            hf_logging.enable_progress_bar()
            hf_logging.set_verbosity(verbosity)


def compress_ir(ir_dir: Path, weight_format: str, settings: dict | None = None) -> None:
    """NNCF weight compression of the IR in place: int8 per channel (asymmetric, as
    optimum-cli's default); int4 with ``settings`` (int4_settings): group size, symmetric
    or not, the share of layers in int4 (``ratio``; the rest, and the embedding and output
    layers unless ``all_layers``, in the backup precision). Without a dataset NNCF ranks
    the layers for ``ratio`` by their weights' quantization error."""
    import nncf
    import openvino as ov
    xml = Path(ir_dir) / "openvino_model.xml"
    model = ov.Core().read_model(str(xml))
    if weight_format == "int8":
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    else:
        s = settings
        mode = nncf.CompressWeightsMode.INT4_SYM if s["int4_sym"] else nncf.CompressWeightsMode.INT4_ASYM
        model = nncf.compress_weights(model, mode=mode, group_size=s["int4_group_size"], ratio=s["int4_ratio"],
                                      all_layers=s["int4_all_layers"], backup_mode=nncf.BackupMode(s["int4_backup"]))
    tmp_xml = xml.with_name("compressed.xml")
    ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
    tmp_xml.replace(xml)
    tmp_xml.with_suffix(".bin").replace(xml.with_suffix(".bin"))


def weight_element_types(ir_dir) -> dict[str, int]:
    """Element types of the IR's constants with more than 1024 values (the weights), counted."""
    import openvino as ov
    model = ov.Core().read_model(str(Path(ir_dir) / "openvino_model.xml"))
    counts: dict[str, int] = {}
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).is_static:
            n = 1
            for d in op.get_output_shape(0):
                n *= d
            if n > 1024:
                t = op.get_output_element_type(0).get_type_name()
                counts[t] = counts.get(t, 0) + 1
    return counts


def state_summary(ir_dir) -> dict:
    """What 'stateful' means in the IR: ReadValue/Assign pairs (KV cache kept in the infer
    request, 2 per layer) and the model's inputs."""
    import openvino as ov
    model = ov.Core().read_model(str(check_ir_dir(ir_dir) / "openvino_model.xml"))
    ops = [op.get_type_name() for op in model.get_ops()]
    return {"ReadValue": ops.count("ReadValue"), "Assign": ops.count("Assign"),
            "inputs": [i.get_any_name() for i in model.inputs],
            "outputs": [o.get_any_name() for o in model.outputs]}


if __name__ == "__main__":
    # python -m medwb.backends.toolchain.openvino_export MODEL_DIR OUT_DIR FORMAT [INT4_SETTINGS_JSON]: one
    # export in a fresh process (the benchmark prepares IRs this way); hands back the manifest.
    import sys

    from medwb.child import write_result
    try:
        given = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
        write_result(export(sys.argv[1], sys.argv[2], sys.argv[3], int4=given))
    except MedwbError as e:
        print(f"medwb: error: {e}", file=sys.stderr)
        sys.exit(2)
