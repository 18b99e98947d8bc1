"""backlm's GPT for transformers (``trust_remote_code``): imports only torch and transformers,
never backlm, and keeps backlm's weight names, so the folder's ``model.safetensors`` loads
as it is.

The network: token embedding (untied from the head), a parameter-free RMS norm after it,
pre-norm blocks (causal attention with q, k and v from one ``(3, inner, C)`` weight, QK RMS
norm then rotary; a ReLU² MLP), a final norm, the untied ``lm_head`` and a tanh softcap of the
fp32 logits. The model knows no direction: ``config.backlm_direction`` says in which order its
ids must be given (a backward model reads each text's ids reversed after ``<|bos|>``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache  # transformers 4.46 and later
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_backlm import BacklmConfig

# transformers 5 names the output's cache ``cache``; 4.x ``past_key_values``
_CACHE_FIELD = ("cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {})
                else "past_key_values")


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMS norm over the last dimension, no weight; eps is the dtype's machine epsilon."""
    scale = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).square()
    scale = (scale / x.size(-1) + torch.finfo(x.dtype).eps).rsqrt()
    return x * scale.to(x.dtype)


def rotary(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, ...]:
    """``cos`` and ``sin`` ``(B, T, head_dim // 2)`` in fp32 for integer ``positions``."""
    inv_freq = base ** -(torch.arange(0, head_dim, 2, dtype=torch.float32,
                                      device=positions.device) / head_dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Halves paired: ``(x1·cos + x2·sin, x2·cos − x1·sin)``."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class BacklmAttention(nn.Module):
    """Causal self-attention; q, k and v in one ``(3, inner, C)`` weight."""

    def __init__(self, config: BacklmConfig, layer: int):
        super().__init__()
        self.layer, self.n_heads, self.head_dim = layer, config.n_heads, config.head_dim
        inner = config.n_heads * config.head_dim
        self.qkv = nn.Parameter(torch.empty(3, inner, config.model_dim))
        self.proj = nn.Parameter(torch.empty(config.model_dim, inner))

    def forward(self, x, cos, sin, mask, cache):
        B, T, _ = x.shape
        qkv = F.linear(x, self.qkv.flatten(0, 1)).view(B, T, 3, self.n_heads, self.head_dim)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, D)
        cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
        q, k = rotate(rms_norm(q), cos, sin), rotate(rms_norm(k), cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return F.linear(y.transpose(1, 2).reshape(B, T, -1), self.proj)


class BacklmMLP(nn.Module):
    """``relu(x @ fc.T)² @ proj.T``, hidden width ``4 · model_dim``."""

    def __init__(self, config: BacklmConfig):
        super().__init__()
        self.fc = nn.Parameter(torch.empty(4 * config.model_dim, config.model_dim))
        self.proj = nn.Parameter(torch.empty(config.model_dim, 4 * config.model_dim))

    def forward(self, x):
        return F.linear(F.relu(F.linear(x, self.fc)).square(), self.proj)


class BacklmBlock(nn.Module):
    """Pre-norm residual block: attention then MLP."""

    def __init__(self, config: BacklmConfig, layer: int):
        super().__init__()
        self.attn = BacklmAttention(config, layer)
        self.mlp = BacklmMLP(config)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.attn(rms_norm(x), cos, sin, mask, cache)
        return x + self.mlp(rms_norm(x))


class BacklmPreTrainedModel(PreTrainedModel):
    """Weight init and the flags transformers reads."""

    config_class = BacklmConfig
    base_model_prefix = "backlm"
    _no_split_modules = ["BacklmBlock"]
    supports_gradient_checkpointing = False
    _supports_cache_class = True  # transformers 4.x: generate() hands forward a DynamicCache
    _supports_static_cache = False
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        # backlm's initialisation, for weights a checkpoint does not hold
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.001)
        elif isinstance(module, BacklmAttention | BacklmMLP):
            bound = 3**0.5 * module.proj.size(0) ** -0.5
            nn.init.uniform_(module.qkv if isinstance(module, BacklmAttention) else module.fc,
                             -bound, bound)
            nn.init.zeros_(module.proj)


def _mask(attention_mask, T: int, past: int, device) -> torch.Tensor | None:
    """A boolean ``(B, 1, T, past + T)`` mask: causal, padded keys hidden; None when plain
    causal attention does (no padding, and no cached prefix or a single new token)."""
    S = past + T
    padded = attention_mask is not None and not bool(attention_mask[:, -S:].all())
    if not padded and (past == 0 or T == 1):
        return None
    allowed = torch.ones(T, S, dtype=torch.bool, device=device).tril(past)[None, None]
    if padded:
        keys = attention_mask[:, -S:].to(torch.bool)[:, None, None, :]
        # a padded query row would see no key at all: let it see itself (its output is unused)
        self_key = torch.zeros(T, S, dtype=torch.bool, device=device)
        rows = torch.arange(T, device=device)
        self_key[rows, rows + past] = True
        allowed = allowed & (keys | self_key)
    return allowed


class BacklmForCausalLM(BacklmPreTrainedModel, GenerationMixin):
    """backlm's GPT with transformers' causal-LM interface and KV cache (``DynamicCache``)."""

    _tied_weights_keys: list[str] = []

    def __init__(self, config: BacklmConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.model_dim)
        self.blocks = nn.ModuleList(BacklmBlock(config, i) for i in range(config.depth))
        self.lm_head = nn.Linear(config.model_dim, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values=None, inputs_embeds=None, labels=None, use_cache=None,
                logits_to_keep=0, cache=None, **kwargs):
        """Logits (softcapped, fp32) and, with ``labels``, the mean next-token loss. The KV
        cache comes as ``cache`` (transformers 5) or ``past_key_values`` (4.x)."""
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is not None:
            past_key_values = cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        elif isinstance(past_key_values, tuple | list):  # 4.x's legacy tuples
            legacy = past_key_values
            past_key_values = DynamicCache()
            for layer, (k, v) in enumerate(legacy):
                past_key_values.update(k, v, layer)
        cache = past_key_values if use_cache else None
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            # left padding: each row's positions count its own tokens, as backlm's do
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device)[None].expand(B, T)
        cos, sin = rotary(position_ids, self.config.head_dim, self.config.rope_base)
        mask = _mask(attention_mask, T, past, x.device)
        x = rms_norm(x)
        for block in self.blocks:
            x = block(x, cos, sin, mask, cache)
        x = rms_norm(x)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(x).float()
        cap = self.config.softcap
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits,
                                      **{_CACHE_FIELD: cache if use_cache else None})
