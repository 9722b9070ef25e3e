"""A ChatGLM2/3-layout causal language model, written for MedWB's tests (not THUDM's code).

A hospital's ChatGLM3 or GLM-4 chat folder carries its own Python code, which transformers
runs only with ``trust_remote_code``. No such folder can be fetched offline, so MedWB's tiny
``chatglm`` checkpoint carries this file instead. It follows the published architecture as the
routes' own ChatGLM implementations read it: the same config keys and weight names
(``transformer.encoder.layers.N.self_attention.query_key_value``...), one fused QKV matrix
(queries, then the KV groups), rotary embedding on the first half of each head in interleaved
pairs with base 10000 x rope_ratio, SwiGLU from one ``dense_h_to_4h`` (gate half first), RMSNorm,
activations laid out [sequence, batch, hidden] and the key/value cache as a tuple per layer of
[sequence, batch, KV groups, head_dim] tensors. ipex-llm replaces these modules' forwards with
its own ChatGLM2/3 kernels, and llama.cpp converts the weights into its own ChatGLM graph: that
they decode the same tokens as this file is the test that all three agree on the architecture.

It uses the legacy tuple cache, as ChatGLM's own code does, and so runs on the transformers of
the ipex and bigdl environments (4.47, 4.31), not on transformers 5.
"""
import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_chatglm import ChatGLMConfig


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, hidden_states):
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(hidden_states.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin per position for the first ``dim`` dimensions of a head, as [positions, dim/2, 2]."""

    def __init__(self, dim, rope_ratio=1.0):
        super().__init__()
        self.dim, self.rope_ratio = dim, rope_ratio
        inv_freq = 1.0 / ((10000 * rope_ratio) ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, max_positions):
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float), self.inv_freq.float())
        return torch.stack([torch.cos(freqs), torch.sin(freqs)], dim=-1)


def apply_rotary(x, rope):
    """x [seq, batch, heads, head_dim]; rope [seq, batch, rot/2, 2]: rotates pairs (0,1), (2,3)...
    of the first ``rot`` dimensions, leaves the rest."""
    seq, batch, heads, _ = x.shape
    rot = rope.shape[-2] * 2
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    pairs = x_rot.reshape(seq, batch, heads, rot // 2, 2)
    cos, sin = rope[..., 0].unsqueeze(2), rope[..., 1].unsqueeze(2)
    out = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin,
                       pairs[..., 1] * cos + pairs[..., 0] * sin], dim=-1).flatten(3)
    return torch.cat([out.to(x.dtype), x_pass], dim=-1)


class CoreAttention(nn.Module):
    """Scaled dot-product attention over [seq, batch, heads, head_dim] queries, keys and values
    (the KV groups already repeated), causal; ``attention_mask`` True where masked. The scale
    is split as ChatGLM's is (1 / (sqrt(head_dim) x layer number), then x layer number in FP32),
    and the attributes are named as bigdl-llm's replacement of this forward reads them."""

    def __init__(self, config, layer_number):
        super().__init__()
        self.layer_number = max(1, layer_number)
        self.hidden_size_per_partition = config.kv_channels * config.num_attention_heads
        self.hidden_size_per_attention_head = config.kv_channels
        self.num_attention_heads_per_partition = config.num_attention_heads
        self.coeff = float(self.layer_number)
        self.norm_factor = math.sqrt(config.kv_channels) * self.coeff
        self.attention_softmax_in_fp32 = True
        self.attention_dropout = nn.Dropout(0.0)

    def forward(self, query_layer, key_layer, value_layer, attention_mask):
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query_layer, key_layer, value_layer))  # [b, heads, seq, dim]
        if attention_mask is not None:
            context = F.scaled_dot_product_attention(q, k, v, ~attention_mask)
        elif q.shape[2] == k.shape[2]:
            context = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # one new token attends to the whole cache
            context = F.scaled_dot_product_attention(q, k, v)
        context = context.permute(2, 0, 1, 3)
        return context.reshape(*context.shape[:2], self.hidden_size_per_partition)


class SelfAttention(nn.Module):
    def __init__(self, config, layer_number):
        super().__init__()
        self.layer_number = max(1, layer_number)
        self.hidden_size_per_attention_head = config.kv_channels
        self.num_attention_heads_per_partition = config.num_attention_heads
        self.multi_query_attention = config.multi_query_attention
        self.num_multi_query_groups_per_partition = (config.multi_query_group_num if config.multi_query_attention
                                                     else config.num_attention_heads)
        self.projection_size = config.kv_channels * config.num_attention_heads
        self.qkv_hidden_size = self.projection_size + 2 * config.kv_channels * self.num_multi_query_groups_per_partition
        self.query_key_value = nn.Linear(config.hidden_size, self.qkv_hidden_size,
                                         bias=config.add_bias_linear or config.add_qkv_bias)
        self.core_attention = CoreAttention(config, self.layer_number)
        self.dense = nn.Linear(self.projection_size, config.hidden_size, bias=config.add_bias_linear)

    def forward(self, hidden_states, attention_mask, rotary_pos_emb, kv_cache=None, use_cache=True):
        seq, batch, _ = hidden_states.shape
        heads, groups = self.num_attention_heads_per_partition, self.num_multi_query_groups_per_partition
        dim = self.hidden_size_per_attention_head
        q, k, v = self.query_key_value(hidden_states).split([heads * dim, groups * dim, groups * dim], dim=-1)
        q, k, v = q.view(seq, batch, heads, dim), k.view(seq, batch, groups, dim), v.view(seq, batch, groups, dim)
        q, k = apply_rotary(q, rotary_pos_emb), apply_rotary(k, rotary_pos_emb)
        if kv_cache is not None:
            k, v = torch.cat([kv_cache[0], k], dim=0), torch.cat([kv_cache[1], v], dim=0)
        present = (k, v) if use_cache else None
        # Each KV group serves heads/groups consecutive query heads.
        k, v = k.repeat_interleave(heads // groups, dim=2), v.repeat_interleave(heads // groups, dim=2)
        return self.dense(self.core_attention(q, k, v, attention_mask)), present


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 2 * config.ffn_hidden_size, bias=config.add_bias_linear)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=config.add_bias_linear)

    def forward(self, hidden_states):
        gate, up = self.dense_h_to_4h(hidden_states).chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(gate) * up)


class GLMBlock(nn.Module):
    def __init__(self, config, layer_number):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.self_attention = SelfAttention(config, layer_number)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = MLP(config)

    def forward(self, hidden_states, attention_mask, rotary_pos_emb, kv_cache=None, use_cache=True):
        attention, kv_cache = self.self_attention(self.input_layernorm(hidden_states), attention_mask,
                                                  rotary_pos_emb, kv_cache=kv_cache, use_cache=use_cache)
        hidden_states = hidden_states + attention
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states)), kv_cache


class GLMTransformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_layers = config.num_layers
        self.post_layer_norm = config.post_layer_norm
        self.layers = nn.ModuleList([GLMBlock(config, i + 1) for i in range(config.num_layers)])
        if self.post_layer_norm:
            self.final_layernorm = RMSNorm(config.hidden_size, eps=config.layernorm_epsilon)

    def _get_layer(self, index):
        return self.layers[index]

    def forward(self, hidden_states, attention_mask, rotary_pos_emb, kv_caches=None, use_cache=True,
                output_hidden_states=False):
        kv_caches = kv_caches or [None] * self.num_layers
        presents = () if use_cache else None
        all_hidden = () if output_hidden_states else None
        for index in range(self.num_layers):
            if output_hidden_states:
                all_hidden += (hidden_states,)
            hidden_states, kv = self._get_layer(index)(hidden_states, attention_mask, rotary_pos_emb,
                                                       kv_cache=kv_caches[index], use_cache=use_cache)
            if use_cache:
                presents += (kv,)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        if self.post_layer_norm:
            hidden_states = self.final_layernorm(hidden_states)
        return hidden_states, presents, all_hidden, None


class Embedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids):
        return self.word_embeddings(input_ids).transpose(0, 1).contiguous()  # [seq, batch, hidden]


class ChatGLMPreTrainedModel(PreTrainedModel):
    config_class = ChatGLMConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["GLMBlock"]

    def _init_weights(self, module):
        return  # the checkpoint holds every weight

    def get_masks(self, input_ids, past_key_values, padding_mask=None):
        """[batch, 1, seq, past + seq], True where a position may not be attended to."""
        batch, seq = input_ids.shape
        mask = torch.ones(batch, seq, seq, device=input_ids.device).tril_()
        past = past_key_values[0][0].shape[0] if past_key_values else 0
        if past:
            mask = torch.cat([torch.ones(batch, seq, past, device=input_ids.device), mask], dim=-1)
        if padding_mask is not None:
            mask = mask * padding_mask.unsqueeze(1)
            if not past:  # a padding position's own row attends to everything (no empty softmax)
                mask -= padding_mask.unsqueeze(-1) - 1
        return (mask < 0.5).bool().unsqueeze(1)

    def get_position_ids(self, input_ids):
        batch, seq = input_ids.shape
        return torch.arange(seq, dtype=torch.long, device=input_ids.device).unsqueeze(0).repeat(batch, 1)


class ChatGLMModel(ChatGLMPreTrainedModel):
    def __init__(self, config, device=None, empty_init=True):
        # ``device``: where the modules are made (ipex-llm passes "meta" and fills them in
        # layer by layer, as for ChatGLM's own code, which takes the same arguments).
        super().__init__(config)
        with torch.device(device) if device else contextlib.nullcontext():
            self.embedding = Embedding(config)
            self.num_layers = config.num_layers
            self.seq_length = config.seq_length
            self.rotary_pos_emb = RotaryEmbedding(config.kv_channels // 2, rope_ratio=config.rope_ratio)
            self.encoder = GLMTransformer(config)
            self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding.word_embeddings

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, full_attention_mask=None,
                past_key_values=None, inputs_embeds=None, use_cache=None, output_hidden_states=None,
                return_dict=None):
        use_cache = self.config.use_cache if use_cache is None else use_cache
        batch, seq = input_ids.shape
        if inputs_embeds is None:
            inputs_embeds = self.embedding(input_ids)
        if full_attention_mask is None and ((attention_mask is not None and not attention_mask.all())
                                            or (past_key_values and seq != 1)):
            full_attention_mask = self.get_masks(input_ids, past_key_values, padding_mask=attention_mask)
        if position_ids is None:
            past = past_key_values[0][0].shape[0] if past_key_values else 0
            position_ids = self.get_position_ids(input_ids) + past
        rope = self.rotary_pos_emb(self.seq_length)[position_ids].transpose(0, 1).contiguous()
        hidden, presents, all_hidden, _ = self.encoder(inputs_embeds, full_attention_mask, rope,
                                                       kv_caches=past_key_values, use_cache=use_cache,
                                                       output_hidden_states=output_hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=presents, hidden_states=all_hidden)


class ChatGLMForConditionalGeneration(ChatGLMPreTrainedModel):
    def __init__(self, config, empty_init=True, device=None):
        super().__init__(config)
        self.transformer = ChatGLMModel(config, device=device, empty_init=empty_init)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.embedding.word_embeddings

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      position_ids=None, use_cache=None, **kwargs):
        if position_ids is None:
            position_ids = self.get_position_ids(input_ids)
        if past_key_values:
            position_ids, input_ids = position_ids[..., -1:], input_ids[:, -1:]
        return {"input_ids": input_ids, "past_key_values": past_key_values or None, "position_ids": position_ids,
                "attention_mask": attention_mask, "use_cache": use_cache, "return_last_logit": True}

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, return_last_logit=False, **kwargs):
        out = self.transformer(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                               output_hidden_states=output_hidden_states, return_dict=True)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        presents = out[1] if isinstance(out, tuple) else out.past_key_values
        if return_last_logit:
            hidden = hidden[-1:]
        logits = self.transformer.output_layer(hidden).transpose(0, 1).contiguous().float()
        return CausalLMOutputWithPast(logits=logits, past_key_values=presents)
