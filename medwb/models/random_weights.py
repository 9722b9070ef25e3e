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
# The families' published configs (their config.json on the hub, read 2026-12), the fields
# that set the shape; the rest are transformers' defaults.
_QWEN = {"hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "vocab_size": 151936,
         "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
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
    # Llama-3.2-3B: grouped-query (8 KV heads), tied embeddings, a 128k vocabulary.
    "llama3.2-3b": {**_LLAMA, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                    "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
                    "tie_word_embeddings": True, "rope_theta": 500000.0, "max_position_embeddings": 8192},
    # Qwen2.5-1.5B(-Instruct): tied embeddings (15% of its weights), 2 KV heads, qkv bias.
    "qwen2.5-1.5b": {**_QWEN, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 1536,
                     "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                     "num_key_value_heads": 2, "max_position_embeddings": 32768},
    # Qwen3-1.7B: head_dim 128 with 16 query and 8 KV heads, q/k norms, tied embeddings.
    "qwen3-1.7b": {**_QWEN, "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": 2048,
                   "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
                   "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960},
    # GLM-4-9B (the transformers-native glm format of glm-4-9b-chat-hf): 2 KV heads, qkv
    # bias, half-dimension rotary; ~38 GB in FP32, so for machines with the RAM.
    "glm-4-9b": {"model_type": "glm", "architectures": ["GlmForCausalLM"], "hidden_act": "silu",
                 "hidden_size": 4096, "intermediate_size": 13696, "num_hidden_layers": 40,
                 "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128, "vocab_size": 151552,
                 "attention_bias": True, "partial_rotary_factor": 0.5, "rms_norm_eps": 1.5625e-07,
                 "rope_theta": 10000.0, "max_position_embeddings": 131072, "tie_word_embeddings": False,
                 "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2},
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def parameter_count(config: dict) -> int:
    from medwb.models import architectures
    return architectures.shape(config).parameters


def build(arch, config: dict):
    """A random-weight transformers model of ``arch`` (a native family) with ``config``."""
    import transformers
    if not arch.transformers_class:
        raise MedwbError(f"{arch.name} models need their own code (remote code): no random-weight checkpoint "
                         "of them is built here")
    model_class = getattr(transformers, arch.transformers_class)
    config_class = transformers.AutoConfig.for_model(config["model_type"]).__class__
    return model_class(config_class(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")}))


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

    from medwb.models import architectures, demo_model
    log(f"building random-weight checkpoint '{name}' ({parameter_count(config) / 1e9:.2f} B parameters, "
        "speed only) ...")
    torch.manual_seed(0)
    model = build(architectures.of_config(config), config)
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


def tiny(family: str, log=print) -> Path:
    """A tiny random-weight checkpoint of ``family`` (medwb.models.architectures: 2 layers,
    grouped-query, widths multiples of 128), with the demo model's tokenizer, built once
    into the cache (``<cache>/tiny/<family>``): what the tests and the route matrix run
    every route on. Speed only, like the shapes."""
    from medwb.models import architectures, demo_model
    if family not in architectures.ARCHITECTURES or not architectures.ARCHITECTURES[family].transformers_class:
        native = [a.name for a in architectures.ARCHITECTURES.values() if a.transformers_class]
        raise MedwbError(f"family {family!r}: tiny checkpoints are built for {', '.join(native)} (a remote-code "
                         "family needs its own code)")
    arch = architectures.ARCHITECTURES[family]
    out = cache_dir() / "tiny" / family
    if (out / "medwb_shape.json").exists():
        return out
    import torch
    from transformers import PreTrainedTokenizerFast
    demo = demo_model.ensure()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(demo)
    if arch.special_tokens:  # those a real folder of the family carries (a converter asks for them)
        tokenizer.add_special_tokens({"additional_special_tokens": list(arch.special_tokens)})
    config = {**arch.tiny, "vocab_size": -(-len(tokenizer) // 64) * 64, "architectures": list(arch.classes[:1])}
    log(f"building a tiny random-weight {family} checkpoint ({architectures.shape(config).parameters:,} parameters)")
    torch.manual_seed(0)
    model = build(arch, config)
    model.eval()
    with atomic_dir(out, overwrite=True) as tmp:
        demo_model.save_checkpoint(model, tmp, with_bin=False)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg.update(medwb_speed_only=True, medwb_shape=f"tiny-{family}")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        if arch.special_tokens:
            tokenizer.save_pretrained(tmp)
        else:
            for f in TOKENIZER_FILES:
                shutil.copy2(demo / f, tmp / f)
        (tmp / "medwb_shape.json").write_text(json.dumps({"shape": f"tiny-{family}", "speed_only": True,
                                                          "parameters": architectures.shape(config).parameters}))
    return out
