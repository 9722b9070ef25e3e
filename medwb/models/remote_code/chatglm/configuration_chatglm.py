"""The configuration of MedWB's ChatGLM-layout test model (remote code; see modeling_chatglm.py).

The keys and their meanings are those of a ChatGLM2/3 or GLM-4 chat folder's config.json
(``num_layers``, ``ffn_hidden_size``, ``kv_channels``, ``multi_query_group_num``,
``padded_vocab_size``, ``rope_ratio``...), so that every tool reading such a folder reads this one.
"""
from transformers import PretrainedConfig


class ChatGLMConfig(PretrainedConfig):
    model_type = "chatglm"

    def __init__(self, num_layers=28, padded_vocab_size=65024, hidden_size=4096, ffn_hidden_size=13696,
                 kv_channels=128, num_attention_heads=32, seq_length=8192, layernorm_epsilon=1e-5,
                 rmsnorm=True, post_layer_norm=True, add_bias_linear=False, add_qkv_bias=True,
                 multi_query_attention=True, multi_query_group_num=2, rope_ratio=1.0, original_rope=True,
                 apply_residual_connection_post_layernorm=False, **kwargs):
        self.num_layers = num_layers
        self.vocab_size = padded_vocab_size
        self.padded_vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.seq_length = seq_length
        self.layernorm_epsilon = layernorm_epsilon
        self.rmsnorm = rmsnorm
        self.post_layer_norm = post_layer_norm
        self.add_bias_linear = add_bias_linear
        self.add_qkv_bias = add_qkv_bias
        self.multi_query_attention = multi_query_attention
        self.multi_query_group_num = multi_query_group_num
        self.rope_ratio = rope_ratio
        self.original_rope = original_rope  # rotary in interleaved pairs, the only layout written here
        self.apply_residual_connection_post_layernorm = apply_residual_connection_post_layernorm
        super().__init__(**kwargs)
