"""BigDL-LLM backend (bigdl env only): low-bit weights through ``bigdl.llm.transformers``.

The case study's quantized route, API side: change the import, pass ``load_in_4bit=True``
or ``load_in_low_bit=...``, and optionally save the converted weights with
``save_low_bit`` so later loads skip the FP32-sized peak of converting a full checkpoint.
Generation reuses the transformers ``generate`` of :class:`PyTorchBackend`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from medwb.backends import knobs
from medwb.backends.knobs import Knob
from medwb.backends.pytorch import PyTorchBackend, load_tokenizer
from medwb.backends.registry import Backend, register
from medwb.backends.toolchain.bigdl_kernels import BUILDS
from medwb.errors import MedwbError
from medwb.paths import atomic_dir, check_model_dir, linear_input_dims, model_config
from medwb.backends.protocol import ProbeSpec, Variant
from medwb.sysinfo import default_threads

# Measured with bigdl-llm 2.4.0 on CPU (see the stack notes): these load and generate.
CPU_LOW_BITS = ("sym_int4", "asym_int4", "sym_int5", "sym_int8")
# Converting on load reads the FP32 checkpoint and quantizes it in place: the conversion of
# TinyLlama's 4.40 GB FP32 shape peaked at 5.09 GB RSS (1.16x; AMD EPYC, 2026-11-30), so
# 1.3x leaves room for the libraries and larger embeddings.
CONVERT_RAM_FACTOR = 1.3
# A 16-bit checkpoint is loaded in its own dtype from memory-mapped shards, layer by layer:
# Llama-2-7B's 13.5 GB BF16 shape peaked at 17.3 GB RSS with bigdl-llm and GLM-4-9B's 18.8 GB
# at 23.6 GB with ipex-llm, but most of that RSS is the mapped shards, which the kernel takes
# back under pressure; the memory in use beside them stayed under 11.3 GB (0.6x) (AMD EPYC,
# 2026-12-06). Checked at 1.3x, the 9 B was refused on 22.7 GiB free and then converted fine.
CONVERT_RAM_FACTOR_16BIT = 0.75
# Accepted by bigdl's API but unusable on CPU: refused up front with the reason.
NOT_ON_CPU = {
    "nf4": "raises 'not supported on CPU'", "nf3": "raises 'not supported on CPU'",
    "fp4": "raises 'not supported on CPU'", "fp8": "raises 'not supported on CPU'",
    "fp16": "converts nothing on CPU (the model stays FP32)",
}


# bigdl-llm-init's settings, which bigdl's docs ask a user to `source` before running:
# Intel OpenMP preloaded in place of torch's GNU OpenMP (OMP_NUM_THREADS set to the cores),
# optionally with jemalloc or tcmalloc as the allocator. "off": the process as it is.
INIT_MODES = ("off", "iomp", "iomp+jemalloc", "iomp+tcmalloc")
JEMALLOC_CONF = "oversize_threshold:1,background_thread:false,metadata_thp:always,dirty_decay_ms:-1,muzzy_decay_ms:-1"
KNOBS = {
    "kernel_build": Knob("process", ("match", "") + BUILDS,
                         why="the run's kernel_build (default 'match': the CPU's own flags)",
                         doc="which ISA build of bigdl's kernels loads"),
    "bigdl_init": Knob("process", INIT_MODES, default="off",
                       why="the environment as the user has it: iomp 1.00x, iomp+tcmalloc 0.90x, neither "
                           "told apart from noise (measured 2026-11-30, TinyLlama's shape, AMD EPYC with "
                           "AVX2 only, docs/compare-and-tuning.md \"Tuning\")",
                       doc="bigdl-llm-init's OpenMP/allocator preloads"),
}


def init_env(mode: str, python: Path, threads: int, package: str = "bigdl.llm") -> dict:
    """The variables ``source bigdl-llm-init`` (with -j/-t for the allocators) would set, for
    the environment whose interpreter is ``python`` (``package``'s libs: bigdl.llm or
    ipex_llm, whose ipex-llm-init is the same script); libraries it cannot find are left
    out, as the script does."""
    if mode in ("off", None):
        return {}
    prefix = Path(python).parent.parent
    preload = [prefix / "lib" / "libiomp5.so"]
    libs = sorted(prefix.glob(f"lib/python3*/site-packages/{package.replace('.', '/')}/libs"))
    env = {"OMP_NUM_THREADS": str(threads)}
    if mode.endswith("jemalloc") and libs:
        preload.append(libs[0] / "libjemalloc.so")
        env["MALLOC_CONF"] = JEMALLOC_CONF
    if mode.endswith("tcmalloc") and libs:
        preload.append(libs[0] / "libtcmalloc.so")
    found = [str(p) for p in preload if p.exists()]
    return {**env, "LD_PRELOAD": " ".join(found)} if found else env


def check_low_bit(low_bit: str, parameter: str = "low_bits") -> str:
    if low_bit in CPU_LOW_BITS:
        return low_bit
    why = NOT_ON_CPU.get(low_bit, "is not a bigdl-llm low-bit type")
    raise MedwbError(f"{parameter}: {low_bit!r} {why}; use one of {', '.join(CPU_LOW_BITS)}")


def is_low_bit_dir(path: Path) -> str | None:
    """The low-bit type a ``save_low_bit`` folder holds, or None for an ordinary checkpoint."""
    try:
        return model_config(path).get("bigdl_transformers_low_bit") or None
    except (OSError, ValueError):
        return None


def _check_linear_dims(model_dir: Path) -> None:
    """bigdl's low-bit kernels need every Linear input size to be a multiple of 64."""
    bad = {k: v for k, v in linear_input_dims(model_dir).items() if v % 64}
    if bad:
        raise MedwbError(f"model_path '{model_dir}': bigdl low-bit kernels need Linear input sizes "
                         f"that are multiples of 64, got {bad}")


def tokenizer_from_files(model_dir: Path):
    """tokenizer.json with tokenizer_config.json's special tokens, for folders whose
    tokenizer_config the bigdl and ipex environments' transformers (4.31, 4.47) cannot read
    (written by transformers 5)."""
    from transformers import PreTrainedTokenizerFast
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    special = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if isinstance(cfg.get(k), str)}
    extra = cfg.get("extra_special_tokens") or cfg.get("additional_special_tokens") or []
    if isinstance(extra, dict):
        extra = list(extra.values())
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"),
                                        additional_special_tokens=list(extra), **special)
    if cfg.get("chat_template"):
        tokenizer.chat_template = cfg["chat_template"]
    tokenizer.padding_side = "left"
    return tokenizer


class BigDLBackend(PyTorchBackend):
    name = "bigdl"
    package, dist = "bigdl.llm", "bigdl-llm"   # ipex-llm: the same API under another name

    def __init__(self, model, tokenizer, model_dir: Path, low_bit: str, threads: int,
                 source: str):
        super().__init__(model, tokenizer, model_dir, low_bit, threads)
        self.low_bit, self.source = low_bit, source

    def kernel_times(self, plan: list[dict]) -> list[dict]:
        # Tried (2026-12-05, AMD EPYC AVX-512): its LowBitLinear timed alone, the way the
        # other runtimes' kernels are, ran 0.09-0.13 ns per weight, 3x slower than the whole
        # model decodes per weight (its fused decode path is not callable alone): no floor.
        raise MedwbError(f"{self.dist}'s low-bit kernel timed outside a model runs about 3x slower per weight "
                         "than its own decode (its fused path is not callable alone), so it would bound nothing")

    @classmethod
    def load(cls, model_dir, low_bit: str = "sym_int4", threads: int | None = None,
             optimize_model: bool = True, parameter: str = "model_path") -> "BigDLBackend":
        """Quantize an FP32/FP16 checkpoint on load, or load a ``save_low_bit`` folder."""
        import importlib

        import torch
        AutoModelForCausalLM = importlib.import_module(f"{cls.package}.transformers").AutoModelForCausalLM

        model_dir = check_model_dir(model_dir, parameter)
        optimize_model = optimize_model and cls.fused(model_dir)
        threads = threads or default_threads()
        torch.set_num_threads(threads)
        from medwb.models.architectures import trust_kwargs
        saved = is_low_bit_dir(model_dir)
        if saved:
            model = AutoModelForCausalLM.load_low_bit(str(model_dir), optimize_model=optimize_model, **trust_kwargs())
            low_bit, source = saved, "load_low_bit"
        else:
            check_low_bit(low_bit)
            _check_linear_dims(model_dir)
            from medwb.paths import checkpoint_bytes, checkpoint_dtype
            from medwb.sysinfo import check_ram
            fp32 = checkpoint_dtype(model_dir) == "float32"
            factor = CONVERT_RAM_FACTOR if fp32 else CONVERT_RAM_FACTOR_16BIT
            check_ram(int(checkpoint_bytes(model_dir) * factor), f"converting '{model_dir}' to {low_bit}",
                      f"{factor:g}x the checkpoint", "free memory, convert on a larger machine, or "
                      "load a save_low_bit folder made elsewhere")
            kwargs = {"load_in_4bit": True} if low_bit == "sym_int4" else {"load_in_low_bit": low_bit}
            # A 16-bit checkpoint loads in its own dtype (the library's default, "auto"): layer
            # by layer, the layers left unquantized staying 16-bit. Forcing FP32 on Llama-2-7B's
            # BF16 shape filled this 24 GiB machine and was killed (AMD EPYC, 2026-12-06).
            kwargs["torch_dtype"] = torch.float32 if fp32 else "auto"
            kwargs.update(trust_kwargs())  # a remote-code folder (ChatGLM2/3), with the user's consent only
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), optimize_model=optimize_model, **kwargs)
            source = "from_pretrained(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
        model.eval()
        if not optimize_model:
            source += ", optimize_model=False"
        return cls(model, cls.tokenizer_of(model_dir), model_dir, low_bit, threads, source)

    @classmethod
    def fused(cls, model_dir: Path) -> bool:
        """Whether the library's fused attention/rotary kernels run for this checkpoint."""
        return True

    @classmethod
    def tokenizer_of(cls, model_dir: Path):
        try:
            return load_tokenizer(model_dir)
        except (ValueError, AttributeError):  # written by transformers 5 (TokenizersBackend): too new here
            return tokenizer_from_files(Path(model_dir))

    def save_low_bit(self, out_dir) -> Path:
        """Write the converted weights and the tokenizer; atomic (temp dir, then rename)."""
        out_dir = Path(out_dir)
        with atomic_dir(out_dir, overwrite=True) as tmp:
            self.model.save_low_bit(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            for extra in ("generation_config.json",):
                if (self.model_dir / extra).exists() and not (tmp / extra).exists():
                    shutil.copy2(self.model_dir / extra, tmp / extra)
            # A remote-code folder's own modeling files: load_low_bit runs them again (its
            # config's auto_map names them) and save_low_bit does not copy them.
            for code in sorted(self.model_dir.glob("*.py")):
                if not (tmp / code.name).exists():
                    shutil.copy2(code, tmp / code.name)
        return out_dir

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int = 1,
                 streamer=None) -> list[str]:
        # One prompt at a time: bigdl's optimized attention is not written for padded batches.
        return super().generate(prompts, max_new_tokens, batch_size=1, streamer=streamer)

    def describe(self) -> dict:
        import importlib.metadata
        info = super().describe()
        info.update(backend=self.name, precision=self.low_bit, load=self.source,
                    **{self.dist.replace("-", "_"): importlib.metadata.version(self.dist)})
        return info


def low_bit_weights_read(folder: Path) -> int | None:
    """Bytes one generated token reads from a save_low_bit folder: every tensor as stored
    (packed low-bit blocks as bytes), except the token-embedding table, which bigdl keeps in
    FP32 and of which one row is read. Read from the file's tensor table (memory-mapped,
    main env), not estimated; None when the folder holds no single pytorch_model.bin."""
    import torch
    path = Path(folder) / "pytorch_model.bin"
    if not path.exists():
        return None
    from medwb.models.architectures import weight_names
    table, _ = weight_names(folder)
    state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    read = 0
    for name, t in state.items():
        read += t.nbytes // t.shape[0] if name.endswith(table) and t.dim() == 2 else t.nbytes
    return read


@register
class BigDL(Backend):
    name, env, family, route = "bigdl", "bigdl", "bigdl", "bigdl-api"
    precisions = CPU_LOW_BITS
    imports = ("torch", "transformers", "bigdl.llm.transformers")
    kernel_builds = True
    kv_bytes = 4  # bigdl keeps the KV cache in FP32 on CPU
    knobs = KNOBS
    runtime = BigDLBackend

    def process_env(self, spec: ProbeSpec) -> dict:
        from medwb import envs
        return init_env(knobs.value(self, spec, "bigdl_init"), envs.python_of(self.env),
                        spec.get("threads") or default_threads(), self.kernel_package)

    def load(self, spec: ProbeSpec) -> BigDLBackend:
        return self.runtime.load(spec["model_path"], spec["precision"], spec.get("threads"))

    def precision_problem(self, precision, where: str) -> str | None:
        try:
            check_low_bit(precision, where)
        except MedwbError as e:
            return str(e)
        return None

    def model_problems(self, model_dir: Path) -> list[str]:
        """bigdl-llm 2.4's transformers 4.31 reads a llama config it cannot honour without a
        word: it has no rope_theta (RoPE base fixed at 10000: Llama-3's 500000 would decode
        wrongly) and knows only the linear and dynamic rope_scaling types."""
        from medwb.paths import model_config
        if not (Path(model_dir) / "config.json").exists():  # an artifact or a placeholder: checked elsewhere
            return []
        cfg = model_config(model_dir)
        rope = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
        theta = rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0
        problems = []
        if float(theta) != 10000.0:
            problems.append(f"bigdl-llm 2.4's transformers 4.31 has no rope_theta: it would run this model "
                            f"(rope_theta {theta:g}, e.g. Llama-3) with 10000 and decode it wrongly; its "
                            "successor ipex-llm reads it (the ipex-llm route)")
        scaling = cfg.get("rope_scaling") or {}
        kind = scaling.get("rope_type") or scaling.get("type") if isinstance(scaling, dict) else None
        if kind and kind not in ("linear", "dynamic"):
            problems.append(f"transformers 4.31 (bigdl env) does not know rope_scaling type {kind!r}")
        return problems

    def prepare(self, model_dir: Path, variant: Variant, root: Path, cfg: dict, log=print) -> dict:
        # Loaded from a save_low_bit folder, as a deployment would (no FP32-sized peak).
        from medwb import envs
        from medwb.paths import dir_size_bytes
        folder = root / f"{self.name}-{variant['precision']}"
        if not (folder / "config.json").exists():
            log(f"{self.name} {variant['precision']}: quantizing and saving the low-bit folder {folder} ...")
            res = envs.query_json(self.env, ["-m", type(self).__module__, str(model_dir), str(folder),
                                             variant["precision"],
                                             str(cfg.get("threads") or 0)],
                                  timeout=cfg.get("timeout_s", 1800), raise_error=False)
            if "error" in res:
                return {"error": f"save_low_bit failed: {res['error']}"}
        return {"path": folder, "bytes": dir_size_bytes(folder), "weights_read_bytes": low_bit_weights_read(folder)}

    def given_artifact(self, path: Path) -> Path | None:
        return path if is_low_bit_dir(path) else None

    def kernels_label(self, kernel_build: str | None) -> str | None:
        return f"{self.name} {kernel_build} build"


def save_low_bit_main(runtime: type[BigDLBackend], argv: list[str]) -> None:
    """``python -m medwb.backends.<bigdl|ipex> MODEL_DIR OUT_DIR LOW_BIT [THREADS]`` (its env):
    quantize and save_low_bit in a fresh process; hands back the folder."""
    import sys

    import medwb  # noqa: F401  (offline switches before bigdl imports transformers)
    from medwb.child import write_result
    try:
        backend = runtime.load(argv[0], argv[2], int(argv[3]) if len(argv) > 3 else None)
        write_result({"path": str(backend.save_low_bit(argv[1]))})
    except MedwbError as e:
        print(f"medwb: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    import sys
    save_low_bit_main(BigDLBackend, sys.argv[1:])
