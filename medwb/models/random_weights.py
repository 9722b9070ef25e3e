"""Random-weight checkpoints of real model shapes, for speed measurements only.

No model hub is reachable, but decode speed does not depend on weight values when the
output length is forced: a checkpoint with a real model's shape and random weights runs
exactly the same kernels on the same amount of memory. Its text is meaningless, so every
such checkpoint carries ``"medwb_speed_only": true`` in its config.json, and every record
made from it says so. The demo model's tokenizer is reused (its ids fit any vocabulary).

Built once per shape into the medwb cache (``<cache>/shapes/<name>``), atomically.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from medwb.errors import MedwbError
from medwb.paths import atomic_dir, cache_dir

_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
          "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "vocab_size": 32000, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
          "pad_token_id": 2}
SHAPES = {
    # TinyLlama-1.1B: 22 layers, grouped-query attention (4 KV heads).
    "tinyllama-1.1b": {**_LLAMA, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                       "num_attention_heads": 32, "num_key_value_heads": 4},
    # A 26-layer full multi-head-attention llama (1.34B without embeddings, 1.47B with):
    # the smallest llama shape llm-cli's loader accepts, so the CLI route can be measured.
    "llama-26l-1.3b": {**_LLAMA, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 26,
                       "num_attention_heads": 16, "num_key_value_heads": 16},
    # Llama-2-7B: needs ~27 GB for FP32 weights alone; for machines with the RAM.
    "llama2-7b": {**_LLAMA, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096},
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def parameter_count(config: dict) -> int:
    h, f, n, v = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"], config["vocab_size"]
    head_dim = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * f + 2 * h
    return n * per_layer + 2 * v * h + h


def is_speed_only(model_dir) -> bool:
    try:
        return bool(json.loads((Path(model_dir) / "config.json").read_text()).get("medwb_speed_only"))
    except (OSError, ValueError):
        return False


def ensure(name: str, with_bin: bool = False, log=print) -> Path:
    """The checkpoint of shape ``name``, built on first use (FP32 safetensors; plus
    pytorch_model.bin with ``with_bin``: the caller knows whether a converter needs it)."""
    if name not in SHAPES:
        raise MedwbError(f"model shape {name!r} is unknown; use one of {', '.join(SHAPES)}")
    out = cache_dir() / "shapes" / name
    if (out / "medwb_shape.json").exists():
        return out
    config = SHAPES[name]
    from medwb.sysinfo import check_ram
    check_ram(int(parameter_count(config) * 4 * (2 if with_bin else 1) * 1.2), f"building model shape {name!r}",
              "its FP32 weights" + (" twice (safetensors and .bin)" if with_bin else "") + ", +20%",
              "use a smaller shape or a larger machine")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from medwb.models import demo_model
    log(f"building random-weight checkpoint '{name}' ({parameter_count(config) / 1e9:.2f} B parameters, "
        "speed only) ...")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    model.eval()
    demo = demo_model.ensure()
    with atomic_dir(out, overwrite=True) as tmp:
        demo_model.save_checkpoint(model, tmp, with_bin=with_bin)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg.update(medwb_speed_only=True, medwb_shape=name)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        for f in TOKENIZER_FILES:
            shutil.copy2(demo / f, tmp / f)
        (tmp / "medwb_shape.json").write_text(json.dumps({"shape": name, "parameters": parameter_count(config),
                                                          "speed_only": True}))
    return out
