"""The transformers side of a hub model folder: what lets ``AutoModelForCausalLM`` and
``AutoTokenizer`` load it without backlm.

    config.json               BacklmConfig: architectures, auto_map, the model's real shape,
                              backlm_direction, special-token ids, dtype
    configuration_backlm.py   the remote code (``trust_remote_code=True``; torch and
    modeling_backlm.py        transformers only), copied from backlm/hub/remote/
    generation_config.json    bos, the tokens that end what the model writes, pad
    tokenizer.json            a real ``tokenizers`` file (:mod:`backlm.hub.tokenizer_hf`)
    tokenizer_config.json     PreTrainedTokenizerFast, its special tokens, the context length
                              and, for chat phases, a Jinja chat template

A text template cannot reverse token ids, so every template renders in READING order, and the
folder says (config, card) that a backward order's ids are reversed after its head tokens
(``<|bos|>``, and the marker of a bidirectional model): ``ids[:h] + ids[h:][::-1]``. The
tokenizer's own special tokens put the head of the model's first order before a text
(``<|bos|>``; ``<|bos|> <|forward|>`` for a bidirectional model).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from backlm import __version__, atomic
from backlm.direction import (
    Direction,
    encode_for,
    prefix_length,
    turn_prompt,
    turn_roles,
)
from backlm.hub.card import CONVERSATION_PHASES, usage_line

ARCHITECTURE = "BacklmForCausalLM"
MODEL_TYPE = "backlm"
REMOTE_FILES = ("configuration_backlm.py", "modeling_backlm.py")
AUTO_MAP = {"AutoConfig": "configuration_backlm.BacklmConfig",
            "AutoModelForCausalLM": "modeling_backlm.BacklmForCausalLM"}
HF_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", *REMOTE_FILES)
# one line on the order of ids, in config.json and the card
ORDER_NOTE = {
    Direction.FORWARD: "ids in reading order after <|bos|>",
    Direction.BACKWARD: ("ids of each text REVERSED after <|bos|>: tokenize in reading order, "
                         "then ids[:1] + ids[1:][::-1]; reverse generated ids to read them"),
    Direction.BIDIRECTIONAL: ("<|bos|> then <|forward|> and reading-order ids, or <|backward|> "
                              "and the ids reversed: ids[:2] + ids[2:][::-1]"),
}


def end_ids(tokenizer: Any, direction: Direction, phase: str) -> list[int]:
    """The ids that end what the model writes: the tag closing the turn it writes in each of
    its orders for a chat phase, then ``<|bos|>`` (the next document) for every phase."""
    ids = tokenizer.special_ids
    out: list[int] = []
    if phase in CONVERSATION_PHASES:
        for order in direction.orders:
            stop = turn_prompt([], turn_roles(order)[1], direction, ids, order)[1]
            out += [stop] if stop not in out else []
    return [*out, ids.bos]


def head_tokens(tokenizer: Any, direction: Direction) -> list[str]:
    """The tokens before a text in the model's first order (``<|bos|>``, and a marker)."""
    ids, _ = encode_for([], direction, direction.orders[0], tokenizer.special_ids)
    return [tokenizer.id_to_token_str(i) for i in ids]


def chat_template(tokenizer: Any, direction: Direction) -> str:
    """A Jinja template of backlm's chat format in reading order (a bidirectional model's
    takes ``order``: forward by default, or backward). ``add_generation_prompt`` adds the tag
    that opens the turn the model writes, where that turn goes: at the end going forward, at
    the start (right after the head) going backward."""
    name, sid = tokenizer.id_to_token_str, tokenizer.special_ids
    turns = (
        "{%- set ns = namespace(system='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}"
        "{%- set ns.system = message['content'] ~ '\\n\\n' -%}"
        "{%- elif message['role'] == 'user' -%}"
        f"{name(sid.user_start)}{{{{ ns.system ~ message['content'] }}}}{name(sid.user_end)}"
        "{%- set ns.system = '' -%}"
        "{%- elif message['role'] == 'assistant' -%}"
        f"{name(sid.assistant_start)}{{{{ message['content'] }}}}{name(sid.assistant_end)}"
        "{%- else -%}"
        "{{ raise_exception('backlm chats have user and assistant turns, and at most one "
        "system message first') }}"
        "{%- endif -%}{%- endfor -%}"
    )
    parts = []
    head = prefix_length(direction)
    for order in direction.orders:
        prompt, _ = turn_prompt([], turn_roles(order)[1], direction, sid, order)
        lead = "".join(name(i) for i in prompt[:head])
        gen = "{%- if add_generation_prompt -%}" + name(prompt[head]) + "{%- endif -%}"
        start = order.writes_at == "start"
        parts.append((order, lead + (gen if start else "") + turns + ("" if start else gen)))
    if len(parts) == 1:
        return parts[0][1]
    (first, a), (second, b) = parts
    return (f"{{%- if (order | default('{first}')) == '{second}' -%}}{b}"
            f"{{%- else -%}}{a}{{%- endif -%}}")


def config_json(tokenizer: Any, direction: Direction, phase: str, step: int,
                model_config: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``config.json``: what transformers needs to build the model, and backlm's order."""
    from backlm.config import ModelConfig, from_dict

    cfg = from_dict(ModelConfig, model_config)
    ends = end_ids(tokenizer, direction, phase)
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "auto_map": AUTO_MAP,
        "vocab_size": cfg.vocab_size, "model_dim": cfg.model_dim, "n_heads": cfg.n_heads,
        "head_dim": cfg.head_dim, "depth": cfg.depth, "seq_len": cfg.seq_len,
        "rope_base": cfg.rope_base, "softcap": cfg.softcap,
        "backlm_direction": str(direction), "backlm_head_tokens": prefix_length(direction),
        "backlm_order": ORDER_NOTE[direction], "backlm_phase": phase, "backlm_step": step,
        "backlm_model_config": {**model_config, "width": cfg.model_dim}, "backlm_usage": usage_line(direction),
        "bos_token_id": tokenizer.bos_id, "eos_token_id": ends[0], "pad_token_id": ends[0],
        "tie_word_embeddings": False, "use_cache": True, "torch_dtype": "float32",
        "library_name": "backlm", "backlm_version": __version__, **extra,
    }


def write(target: Path, tokenizer: Any, direction: Direction, phase: str, step: int,
          model_config: dict[str, Any], extra: dict[str, Any]) -> None:
    """Write the transformers files (:data:`HF_FILES`) into ``target``; the weights are
    written by the caller (:mod:`backlm.hub.staging`) under backlm's own tensor names,
    which the remote model keeps."""
    from backlm.hub import tokenizer_hf

    remote = resources.files("backlm.hub.remote")
    for name in REMOTE_FILES:
        atomic.write_text(target / name, remote.joinpath(name).read_text(encoding="utf-8"))
    config = config_json(tokenizer, direction, phase, step, model_config, extra)
    atomic.write_json(target / "config.json", config)
    ends = end_ids(tokenizer, direction, phase)
    atomic.write_json(target / "generation_config.json", {
        "bos_token_id": tokenizer.bos_id, "eos_token_id": ends if len(ends) > 1 else ends[0],
        "pad_token_id": ends[0], "do_sample": False})
    head = head_tokens(tokenizer, direction)
    atomic.write_text(target / "tokenizer.json",
                      tokenizer_hf.build(tokenizer, head).to_str(pretty=False))
    name = tokenizer.id_to_token_str
    special = {"bos_token": name(tokenizer.bos_id), "eos_token": name(ends[0]),
               "pad_token": name(ends[0])}
    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast", **special,
        "additional_special_tokens": [n for n in tokenizer.specials if n not in special.values()],
        "model_max_length": config["seq_len"], "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "padding_side": "left",
        "backlm_direction": str(direction), "backlm_order": ORDER_NOTE[direction]}
    if phase in CONVERSATION_PHASES:
        tok_config["chat_template"] = chat_template(tokenizer, direction)
    atomic.write_json(target / "tokenizer_config.json", tok_config)
    atomic.write_json(target / "special_tokens_map.json", {
        **special, "additional_special_tokens": tok_config["additional_special_tokens"]})
