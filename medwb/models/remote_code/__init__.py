"""Remote-code test models written here: the Python a hospital's folder of a remote-code family
carries (``modeling_*.py`` beside config.json), for the families none of which can be fetched
offline. One folder per family; ``tensors`` says which weights its modeling file reads, so
that ``medwb.models.random_weights`` writes a tiny checkpoint without importing that file
(it runs only on the transformers of the environments the registry names). Each file stands
alone, as a real folder's does: transformers imports it from the folder it is copied into, so
it shares no code with medwb (Baichuan2's tokenizer class and medwb.models.sp_tokenizer look
alike for that reason).
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def code_dir(family: str) -> Path | None:
    """The folder of ``family``'s modeling files, if one is written here."""
    folder = HERE / family
    return folder if (folder / f"modeling_{family}.py").exists() else None


def tensors(family: str, cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every weight the family's modeling file loads, by name, with its shape."""
    if family == "baichuan":
        return _baichuan(cfg)
    if family != "chatglm":
        raise KeyError(family)
    hidden, vocab, ffn = cfg["hidden_size"], cfg["padded_vocab_size"], cfg["ffn_hidden_size"]
    q = cfg["kv_channels"] * cfg["num_attention_heads"]
    groups = cfg["multi_query_group_num"] if cfg["multi_query_attention"] else cfg["num_attention_heads"]
    qkv = q + 2 * cfg["kv_channels"] * groups
    out = {"transformer.embedding.word_embeddings.weight": (vocab, hidden)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        out.update({p + "input_layernorm.weight": (hidden,),
                    p + "self_attention.query_key_value.weight": (qkv, hidden),
                    p + "self_attention.dense.weight": (hidden, q),
                    p + "post_attention_layernorm.weight": (hidden,),
                    p + "mlp.dense_h_to_4h.weight": (2 * ffn, hidden),
                    p + "mlp.dense_4h_to_h.weight": (hidden, ffn)})
        if cfg.get("add_qkv_bias") or cfg.get("add_bias_linear"):
            out[p + "self_attention.query_key_value.bias"] = (qkv,)
    out.update({"transformer.encoder.final_layernorm.weight": (hidden,),
                "transformer.output_layer.weight": (vocab, hidden)})
    return out


def _baichuan(cfg: dict) -> dict[str, tuple[int, ...]]:
    hidden, vocab, ffn = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    out = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (hidden,),
                    p + "self_attn.W_pack.weight": (3 * hidden, hidden),
                    p + "self_attn.o_proj.weight": (hidden, hidden),
                    p + "post_attention_layernorm.weight": (hidden,),
                    p + "mlp.gate_proj.weight": (ffn, hidden),
                    p + "mlp.up_proj.weight": (ffn, hidden),
                    p + "mlp.down_proj.weight": (hidden, ffn)})
    out.update({"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)})
    return out
