"""GGUF files for llama.cpp: convert a local checkpoint (main env), quantize it (llamacpp env).

The tools are llama.cpp's own, from the locked source archive (see llamacpp_setup):
``convert_hf_to_gguf.py`` writes a GGUF in the checkpoint's own precision once per model
(F32, or BF16/F16 for a 16-bit checkpoint: lossless either way), run in the main environment
(it needs torch and transformers); llama.cpp's quantizer (``llama_model_quantize``, what
``llama-quantize`` calls) makes each precision from it, in the llamacpp environment. This is
the route llama.cpp documents for a Hugging Face checkpoint.

One thing is adapted, not copied: the converter identifies a byte-level BPE tokenizer by
hashing how it splits a test string and stops on a hash it does not know (every new
tokenizer, the demo model's included). When the checkpoint's ``tokenizer.json`` says its
pre-tokenizer is plain GPT-2 byte-level splitting (``ByteLevel`` with the GPT-2 regex), that
is llama.cpp's ``gpt-2`` pre-tokenizer, so an unknown hash is mapped to it; anything else
still stops with the converter's own message. And a family whose output layer normalises its
rows before use (Baichuan2's NormHead) gets them normalised as they are read: the converter
would copy them as stored.

Each artifact is a folder ``model.gguf``, the checkpoint's ``config.json`` (the context an app
worker fits a record to) and ``medwb_gguf.json`` (written last: a folder without it is
incomplete and rebuilt), made in a temporary folder and renamed.

    python -m medwb.backends.toolchain.gguf_export convert MODEL_DIR OUT_DIR
    python -m medwb.backends.toolchain.gguf_export quantize CONVERTED_DIR OUT_DIR PRECISION
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from medwb.errors import MedwbError
from medwb.paths import VENVS_DIR, atomic_dir, write_json_atomic
from medwb.sysinfo import default_threads

MODEL_FILE = "model.gguf"
MANIFEST = "medwb_gguf.json"
# medwb precision -> llama.cpp file type (LLAMA_FTYPE_*): what `llama-quantize` calls them.
FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15}
# The converter streams tensor by tensor: converting Llama-3.2-3B's BF16 shape (6.4 GB) to a
# BF16 GGUF peaked at 3.5 GB RSS, mapped checkpoint pages included (AMD EPYC, 2026-12-06).
# The output keeps the checkpoint's precision: an F32 GGUF of a 16-bit 7B is 27 GB of disk.
CONVERT_RAM_FACTOR = 0.75
# config.json's weight dtype -> the converter's --outtype that keeps it exactly.
OUTTYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def source_dir() -> Path:
    """Where llamacpp_setup unpacked the converter ($MEDWB_LLAMACPP_SRC overrides)."""
    return Path(os.environ.get("MEDWB_LLAMACPP_SRC") or VENVS_DIR / "llamacpp" / "src" / "llama.cpp")


def _use_vendored(src: Path) -> None:
    if not (src / "convert_hf_to_gguf.py").exists():
        raise MedwbError(f"llama.cpp's converter is not at {src}: run `make setup` (it unpacks it from "
                         "the locked llama-cpp-python source)")
    for p in (str(src / "gguf-py"), str(src)):
        if p not in sys.path:
            sys.path.insert(0, p)


def built(out_dir: Path) -> dict | None:
    """The manifest of a complete artifact folder (its file, config and manifest, the file
    of the recorded size); None when it is absent or partial."""
    out_dir = Path(out_dir)
    m = out_dir / MANIFEST
    if not m.exists() or not (out_dir / MODEL_FILE).exists() or not (out_dir / "config.json").exists():
        return None
    manifest = json.loads(m.read_text(encoding="utf-8"))
    return manifest if manifest.get("bytes") == (out_dir / MODEL_FILE).stat().st_size else None


def _gpt2_byte_level(model_dir: Path) -> bool:
    tok = Path(model_dir) / "tokenizer.json"
    if not tok.exists():
        return False
    pre = json.loads(tok.read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True)


def tensor_table(gguf_file: Path) -> dict:
    """Bytes per tensor type, and what generating one token reads: every tensor except the
    token embedding table, of which one row is read (the floor of medwb.bench); a file with
    no output.weight ties the two (Qwen2.5, Qwen3 small models): the table is then read
    whole, as the output layer."""
    import gguf
    reader = gguf.GGUFReader(str(gguf_file))
    by_type: dict[str, int] = {}
    total = embd = embd_rows = 0
    for t in reader.tensors:
        name = t.tensor_type.name
        by_type[name] = by_type.get(name, 0) + int(t.n_bytes)
        total += int(t.n_bytes)
        if t.name == "token_embd.weight":
            embd, embd_rows = int(t.n_bytes), int(t.shape[-1])
    types = {t.name: t.tensor_type.name for t in reader.tensors if t.name in ("token_embd.weight", "output.weight")}
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    read = total if tied else total - embd + (embd // embd_rows if embd_rows else 0)
    return {"tensor_bytes": total, "bytes_by_type": by_type, "types": types, "weights_read_bytes": read}


def outtype(model_dir: Path) -> str:
    """The GGUF type that holds the checkpoint's weights exactly (its config's dtype; F32
    when the config does not say)."""
    from medwb.paths import checkpoint_dtype
    return OUTTYPES.get(checkpoint_dtype(model_dir), "f32")


def _mend_recursion(base) -> None:
    """The converter of llama-cpp-python 0.3.36 hands every tensor of a Baichuan folder but the
    fused QKV back to its own ``modify_tensors`` under the already-mapped name, which maps to
    itself: RecursionError on any Baichuan folder (measured). Those tensors go to the base
    class's ``modify_tensors`` instead, as the converter's other families send theirs; a
    converter without the self-call is left as it is."""
    import inspect
    from conversion import baichuan
    own = baichuan.BaichuanModel.modify_tensors
    if getattr(own, "medwb_mended", False) or "self.modify_tensors(" not in inspect.getsource(own):
        return

    def modify_tensors(self, data_torch, name, bid):
        if bid is not None and name.endswith(".self_attn.W_pack.weight"):
            yield from own(self, data_torch, name, bid)
        else:
            yield from base.TextModel.modify_tensors(self, data_torch, name, bid)
    modify_tensors.medwb_mended = True
    baichuan.BaichuanModel.modify_tensors = modify_tensors


def _sentencepiece_proto(model_dir: Path):
    from sentencepiece import sentencepiece_model_pb2
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((Path(model_dir) / "tokenizer.model").read_bytes())
    return proto


def _keep_sentencepiece_settings(base) -> None:
    """Two settings of a folder's tokenizer.model that the converter's SentencePiece path drops
    (measured on a Baichuan2-layout folder; rendered chat prompts got other ids on llama.cpp
    than on every other route):
    - user-defined pieces (Baichuan2's chat markers <reserved_106>/<reserved_107>, ids 195/196),
      which SentencePiece matches whole in any text, were typed normal, so llama.cpp spelled
      them out character by character: they keep their type;
    - ``add_dummy_prefix`` off (Baichuan2 adds no leading space) was not written, so llama.cpp
      put a space before each piece of text: written when the converter wrote none."""
    own_types, own_vocab = base.TextModel._create_vocab_sentencepiece, base.TextModel._set_vocab_sentencepiece
    if getattr(own_types, "medwb_mended", False):
        return

    def _create_vocab_sentencepiece(self):
        tokens, scores, toktypes = own_types(self)
        for i, piece in enumerate(_sentencepiece_proto(self.dir_model).pieces):
            if piece.type == piece.USER_DEFINED and i < len(toktypes):
                toktypes[i] = base.SentencePieceTokenTypes.USER_DEFINED
        return tokens, scores, toktypes

    def _set_vocab_sentencepiece(self, *args, **kwargs):
        own_vocab(self, *args, **kwargs)
        key = "tokenizer.ggml.add_space_prefix"
        if not any(key in kv for kv in self.gguf_writer.kv_data):
            self.gguf_writer.add_add_space_prefix(_sentencepiece_proto(self.dir_model).normalizer_spec.add_dummy_prefix)
    _create_vocab_sentencepiece.medwb_mended = True
    base.TextModel._create_vocab_sentencepiece = _create_vocab_sentencepiece
    base.TextModel._set_vocab_sentencepiece = _set_vocab_sentencepiece


def _normalized_output(model_dir: Path) -> str | None:
    """The output layer's weight name when the family normalises its rows before use
    (Baichuan2's NormHead: medwb.models.architectures), which llama.cpp's converter would
    copy as stored: the GGUF must hold the rows the model multiplies by. None otherwise."""
    from medwb.models import architectures
    arch = architectures.known(model_dir)
    if arch is None or arch.normalized_output is None:
        return None
    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return f"{arch.output_weight}.weight" if arch.normalized_output(cfg) else None


def _unit_rows(weight):
    import torch
    return torch.nn.functional.normalize(weight.float(), dim=-1).to(weight.dtype)


def convert(model_dir: Path, out_dir: Path) -> dict:
    """The GGUF of a checkpoint in its own precision (:func:`outtype`), with llama.cpp's
    converter (main env)."""
    from medwb.paths import checkpoint_bytes, check_model_dir
    model_dir = check_model_dir(model_dir, "model_path")
    out_dir = Path(out_dir)
    if (done := built(out_dir)) is not None:
        return done
    kind = outtype(model_dir)
    from medwb.sysinfo import check_ram
    check_ram(int(checkpoint_bytes(model_dir) * CONVERT_RAM_FACTOR), f"converting '{model_dir}' to GGUF",
              f"{CONVERT_RAM_FACTOR:g}x the checkpoint",
              "free memory or convert on a larger machine")
    src = source_dir()
    _use_vendored(src)
    import convert_hf_to_gguf as converter
    from conversion import base

    if _gpt2_byte_level(model_dir):
        original = base.TextModel.get_vocab_base_pre

        def get_vocab_base_pre(self, tokenizer) -> str:
            try:
                return original(self, tokenizer)
            except NotImplementedError:
                return "gpt-2"  # GPT-2 byte-level splitting: see the module docstring
        base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    _mend_recursion(base)
    _keep_sentencepiece_settings(base)
    output = _normalized_output(model_dir)
    if output:  # Baichuan2's NormHead: see _normalized_output
        original_tensors = base.ModelBase.get_tensors

        def get_tensors(self):
            for name, data in original_tensors(self):
                yield name, (_unit_rows(data) if name == output else data)
        base.ModelBase.get_tensors = get_tensors
    started = time.perf_counter()
    with atomic_dir(out_dir, overwrite=True) as tmp:
        argv = sys.argv
        sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(tmp / MODEL_FILE), "--outtype", kind]
        try:
            converter.main()
        finally:
            sys.argv = argv
            if output:
                base.ModelBase.get_tensors = original_tensors
        shutil.copyfile(model_dir / "config.json", tmp / "config.json")  # the context an app worker fits to
        manifest = {"precision": kind, "source": str(model_dir), "bytes": (tmp / MODEL_FILE).stat().st_size,
                    "seconds": round(time.perf_counter() - started, 1), "tool": "convert_hf_to_gguf.py",
                    "tool_dir": str(src), **tensor_table(tmp / MODEL_FILE)}
        write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


def quantize(converted_dir: Path, out_dir: Path, precision: str, threads: int = 0) -> dict:
    """``precision`` from the converter's GGUF (``converted_dir``: F32, or the 16-bit checkpoint's
    own type) with llama.cpp's quantizer (llamacpp env)."""
    import llama_cpp

    if precision not in FTYPES:
        raise MedwbError(f"precision {precision!r}: llama.cpp variants take {', '.join(FTYPES)}")
    out_dir = Path(out_dir)
    if (done := built(out_dir)) is not None:
        return done
    _use_vendored(source_dir())
    if built(converted_dir) is None:
        raise MedwbError(f"'{converted_dir}' holds no complete GGUF from the converter (gguf_export convert makes it)")
    started = time.perf_counter()
    with atomic_dir(out_dir, overwrite=True) as tmp:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPES[precision]
        params.nthread = threads or default_threads()
        rc = llama_cpp.llama_model_quantize(str(Path(converted_dir) / MODEL_FILE).encode(),
                                            str(tmp / MODEL_FILE).encode(), params)
        if rc != 0:
            raise MedwbError(f"llama.cpp could not quantize {converted_dir} to {precision} (llama_model_quantize "
                             f"returned {rc})")
        shutil.copyfile(Path(converted_dir) / "config.json", tmp / "config.json")
        manifest = {"precision": precision, "source": str(converted_dir), "bytes": (tmp / MODEL_FILE).stat().st_size,
                    "seconds": round(time.perf_counter() - started, 1), "tool": "llama_model_quantize",
                    "llama_cpp_python": llama_cpp.__version__, **tensor_table(tmp / MODEL_FILE)}
        write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


if __name__ == "__main__":
    from medwb.child import write_result
    command, args = sys.argv[1], sys.argv[2:]
    if command == "convert":
        write_result(convert(Path(args[0]), Path(args[1])))
    elif command == "quantize":
        write_result(quantize(Path(args[0]), Path(args[1]), args[2]))
    else:
        raise SystemExit(f"unknown command {command!r}: use convert or quantize")
