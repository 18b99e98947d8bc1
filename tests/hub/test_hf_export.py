"""backlm.hub.hf_export and the remote code it ships (backlm/hub/remote/): transformers loads
the folder with no backlm, its tokenizer gives backlm's ids (chat template included, in every
direction), its logits are backlm's and greedy ``generate()`` (KV cache) writes backlm's
tokens."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from backlm.direction import Direction, Role, encode_conversation, turn_prompt
from backlm.hub import hf_export
from tests.conftest import make_docs
from tests.hub.test_tokenizer_hf import CORPUS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
MODEL = {"depth": 2, "width": 64, "head_dim": 16, "vocab_size": 0, "seq_len": 64,
         "softcap": 15.0, "rope_base": 10000.0}
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4, 😀 naïve"},
            {"role": "user", "content": "and  3\n+ 3?"}]


@pytest.fixture(scope="module")
def tok():
    from backlm.tokenizer import Tokenizer

    return Tokenizer.train(make_docs(300) + CORPUS * 3, vocab_size=420)


def write_folder(tok, folder: Path, direction: str, phase: str = "sft", seed: int = 0):
    """An HF folder as staging writes it, with random weights large enough that attention and
    every layer change the outputs; the backlm GPT with the same weights."""
    from safetensors.torch import save_file

    from backlm.config import ModelConfig, from_dict
    from backlm.model.gpt import GPT

    config = {**MODEL, "vocab_size": tok.vocab_size}
    model = GPT(from_dict(ModelConfig, config)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim > 1 else 1.0))
    folder.mkdir(parents=True)
    hf_export.write(folder, tok, Direction.parse(direction), phase, 7, config, {})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    return model


def test_the_remote_code_imports_only_torch_and_transformers():
    for name in hf_export.REMOTE_FILES:
        path = Path(hf_export.__file__).parent / "remote" / name
        tree = ast.parse(path.read_text(encoding="utf-8"))
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
        roots |= {n.module.split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
        assert roots <= {"__future__", "torch", "transformers"}, (name, roots)


def test_a_derived_width_is_written_as_the_width_the_model_has(tok):
    config = hf_export.config_json(tok, Direction.FORWARD, "base", 3,
                                   {**MODEL, "width": 0, "depth": 3}, {})
    assert config["model_dim"] == config["backlm_model_config"]["width"] == 192


def test_config_says_shape_order_and_remote_code(tok, tmp_path):
    write_folder(tok, tmp_path / "m", "backward", phase="sft")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["BacklmForCausalLM"] and config["model_type"] == "backlm"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_backlm.BacklmForCausalLM"
    assert (config["model_dim"], config["n_heads"], config["head_dim"], config["depth"]) == (
        64, 4, 16, 2)
    assert config["backlm_direction"] == "backward" and "REVERSED" in config["backlm_order"]
    specials = tok.specials
    # a backward chat model writes the user turn, which <|user_start|> closes in its order
    assert config["eos_token_id"] == specials["<|user_start|>"]
    gen = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [specials["<|user_start|>"], specials["<|bos|>"]]
    tok_config = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_config["model_max_length"] == 64 and "chat_template" in tok_config


@pytest.mark.parametrize(("direction", "eos"), [("forward", ["<|assistant_end|>", "<|bos|>"]),
                                                ("bidirectional", ["<|assistant_end|>",
                                                                   "<|user_start|>", "<|bos|>"])])
def test_end_tokens_follow_the_turn_the_model_writes(tok, direction, eos):
    ids = hf_export.end_ids(tok, Direction.parse(direction), "sft")
    assert ids == [tok.specials[n] for n in eos]
    assert hf_export.end_ids(tok, Direction.parse(direction), "base") == [tok.bos_id]


def test_the_tokenizer_gives_backlms_ids(tok, tmp_path):
    from transformers import AutoTokenizer

    write_folder(tok, tmp_path / "m", "forward")
    hf = AutoTokenizer.from_pretrained(tmp_path / "m", trust_remote_code=True)
    for text in CORPUS:
        if "<|bos|>" in text:  # backlm's encode never emits specials; HF reads them in text
            continue
        assert hf(text, add_special_tokens=False).input_ids == tok.encode(text), text
        assert hf(text).input_ids == [tok.bos_id, *tok.encode(text)]
        assert hf.decode(hf(text).input_ids, skip_special_tokens=True) == text
    rendered = [tok.bos_id, *tok.render_turn("user", "hi <b>"), *tok.render_turn("assistant", "x")]
    text = "<|bos|><|user_start|>hi <b><|user_end|><|assistant_start|>x<|assistant_end|>"
    assert hf(text, add_special_tokens=False).input_ids == rendered
    assert hf.bos_token_id == tok.bos_id and hf.eos_token == "<|assistant_end|>"


def _chat_ids(hf, generation: bool, **kw) -> list[int]:
    out = hf.apply_chat_template(MESSAGES if not generation else MESSAGES[:3],
                                 add_generation_prompt=generation, tokenize=True, **kw)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_the_chat_template_renders_backlms_conversations(tok, tmp_path, direction):
    """Reading order from the template; the model's order once ids after the head tokens are
    reversed (what the card tells a backward user to do)."""
    from transformers import AutoTokenizer

    model_dir = Direction.parse(direction)
    write_folder(tok, tmp_path / "m", direction)
    hf = AutoTokenizer.from_pretrained(tmp_path / "m", trust_remote_code=True)
    head = json.loads((tmp_path / "m" / "config.json").read_text())["backlm_head_tokens"]
    ids, sid = tok.special_ids, tok.special_ids
    for order in model_dir.orders:
        kw = {"order": str(order)} if model_dir is Direction.BIDIRECTIONAL else {}

        def model_order(got: list[int], order=order) -> list[int]:
            return got if order is Direction.FORWARD else got[:head] + got[head:][::-1]

        tokens, roles, parts = tok.render_conversation(MESSAGES)
        want, _ = encode_conversation(tokens, roles, parts, model_dir, ids, order)
        assert model_order(_chat_ids(hf, False, **kw)) == want
        # asking for a turn: forward the model writes the assistant's after the given turns;
        # backward it writes a user turn before them
        context, _, _ = tok.render_conversation(MESSAGES[:3])
        write = Role.ASSISTANT if order is Direction.FORWARD else Role.USER
        prompt, _ = turn_prompt(context, write, model_dir, sid, order)
        assert model_order(_chat_ids(hf, True, **kw)) == prompt


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_logits_and_greedy_generation_are_backlms(tok, tmp_path, direction):
    from transformers import AutoModelForCausalLM

    ours = write_folder(tok, tmp_path / "m", direction)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)
    assert type(model).__name__ == "BacklmForCausalLM" and model.dtype == torch.float32
    model.generation_config.eos_token_id = None  # write the full length, as backlm's does
    texts = ["doc1: alpha beta gamma delta. zeta", "日本 😀 x 12345"]
    prompts = [[tok.bos_id, *tok.encode(t)] for t in texts]
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            got, want = model(x).logits, ours(x)
            assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
        greedy = [list(ours.generate(ids, 24, temperature=0.0)) for ids in prompts]
        assert len(set(greedy[0])) > 3, greedy  # a model stuck on one token would prove little
        for ids, want in zip(prompts, greedy, strict=True):
            out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
            assert out[0, len(ids):].tolist() == want
        # a left-padded batch (attention mask, per-row positions) writes the same tokens
        width = max(map(len, prompts))
        pad = tok.specials["<|assistant_end|>"]
        batch = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(batch, attention_mask=mask, max_new_tokens=24, do_sample=False,
                             pad_token_id=pad)
        assert [row[width:].tolist() for row in out] == greedy
