"""backlm's GPT configuration for transformers (``trust_remote_code``): imports only
transformers, never backlm.

``backlm_direction`` says which order the model reads token ids in: ``forward`` (reading
order), ``backward`` (each text's ids reversed after ``<|bos|>``) or ``bidirectional`` (a
``<|forward|>`` or ``<|backward|>`` marker after ``<|bos|>`` picks the order).
``backlm_head_tokens`` is how many tokens come before a text's body (``<|bos|>``, and the
marker): a backward body is reversed after them.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class BacklmConfig(PretrainedConfig):
    """Shape of backlm's GPT, the order it reads, and its special tokens."""

    model_type = "backlm"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"hidden_size": "model_dim", "num_hidden_layers": "depth",
                     "num_attention_heads": "n_heads", "num_key_value_heads": "n_heads",
                     "max_position_embeddings": "seq_len"}

    def __init__(self, vocab_size: int = 8192, model_dim: int = 256, n_heads: int = 2,
                 head_dim: int = 128, depth: int = 4, seq_len: int = 512,
                 rope_base: float = 10000.0, softcap: float = 15.0,
                 backlm_direction: str | None = None, backlm_head_tokens: int = 1,
                 bos_token_id: int | None = None, eos_token_id: int | list[int] | None = None,
                 pad_token_id: int | None = None, tie_word_embeddings: bool = False,
                 use_cache: bool = True, **kwargs):
        self.vocab_size, self.model_dim, self.n_heads = vocab_size, model_dim, n_heads
        self.head_dim, self.depth, self.seq_len = head_dim, depth, seq_len
        self.rope_base, self.softcap = rope_base, softcap
        self.backlm_direction, self.backlm_head_tokens = backlm_direction, backlm_head_tokens
        self.use_cache = use_cache
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings,
                         **kwargs)
