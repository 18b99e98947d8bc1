"""Direction-aware scoring of task examples: conditional forward, joint backward, prompt
cropping, choice summaries and generation in reading order."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from backlm.evaluation import scoring, tasks
from tests.conftest import ByteTokenizer


class _Tok(ByteTokenizer):
    def token_byte_lengths(self) -> list[int]:
        return [1] * 256 + [0] * 7


def _loaded(direction: str, seq_len: int = 64) -> SimpleNamespace:
    from backlm.config import ModelConfig
    from backlm.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(depth=1, width=32, head_dim=16, vocab_size=263, seq_len=seq_len))
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # far from uniform: scores differ
    return SimpleNamespace(model=model.eval(), tokenizer=_Tok(), direction=direction,
                           device=torch.device("cpu"))


def _manual(model, seq: list[int], scored: range) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([seq[:-1]])), dim=-1)[0]
    return sum(float(logp[i - 1, seq[i]]) for i in scored)


EXAMPLE = tasks.ChoiceExample("x", "Question: 2+2?\nAnswer:", (" four", " five", " 22"), 0)


@pytest.mark.parametrize("model_dir, order, head", [
    ("forward", "forward", [256]), ("backward", "forward", [256]),
    ("bidirectional", "forward", [256, 257]),
])
def test_forward_scoring_is_conditional(model_dir, order, head):
    loaded, tok = _loaded(model_dir), _Tok()
    logps, norms = scoring.score_choices(loaded, EXAMPLE, order, tok.token_byte_lengths())
    prompt = tok.encode(EXAMPLE.prompt)
    for choice, lp, norm in zip(EXAMPLE.choices, logps, norms, strict=True):
        ids = tok.encode(choice)
        seq = [*head, *prompt, *ids]
        want = _manual(loaded.model, seq, range(len(seq) - len(ids), len(seq)))
        assert lp == pytest.approx(want, rel=1e-4, abs=1e-4)
        assert norm == pytest.approx(lp / len(ids), rel=1e-6)


@pytest.mark.parametrize("model_dir, head", [
    ("backward", [256]), ("forward", [256]), ("bidirectional", [256, 258]),
])
def test_backward_scoring_is_joint_over_the_reversed_sequence(model_dir, head):
    loaded, tok = _loaded(model_dir), _Tok()
    logps, norms = scoring.score_choices(loaded, EXAMPLE, "backward", tok.token_byte_lengths())
    for choice, lp, norm in zip(EXAMPLE.choices, logps, norms, strict=True):
        body = tok.encode(EXAMPLE.prompt + choice)
        seq = [*head, *reversed(body)]
        # every token is scored except BOS and the (user-chosen) marker
        assert lp == pytest.approx(_manual(loaded.model, seq, range(len(head), len(seq))),
                                   rel=1e-4, abs=1e-4)
        assert norm == pytest.approx(lp / len(body), rel=1e-6)


def test_long_prompts_lose_their_start_equally_for_every_choice():
    assert scoring.fit_prompt(list(range(10)), 3, seq_len=8, head=1) == [5, 6, 7, 8, 9]
    assert scoring.fit_prompt([1, 2], 3, seq_len=8, head=1) == [1, 2]
    loaded = _loaded("forward", seq_len=16)
    ex = tasks.ChoiceExample("y", "Question: " + "long " * 20, (" a", " bbb"), 1)
    logps, _ = scoring.score_choices(loaded, ex, "backward", _Tok().token_byte_lengths())
    assert len(logps) == 2 and all(lp < 0 for lp in logps)


def test_choice_task_summary():
    loaded = _loaded("backward")
    records, summary = scoring.evaluate_choice_task(loaded, [EXAMPLE, EXAMPLE], "backward")
    assert summary["n"] == 2 and summary["scoring"] == "joint" and summary["metric"] == "acc"
    assert 0.0 <= summary["acc"] <= 1.0 and summary["score"] == summary["acc"]
    assert records[0]["pred"] == max(range(3), key=lambda i: records[0]["logprobs"][i])


class _StubModel:
    """Writes a fixed token stream and remembers the prompts it got."""

    cfg = SimpleNamespace(seq_len=64)

    def __init__(self, stream: list[int]) -> None:
        self.stream, self.prompts = stream, []

    def generate(self, tokens, max_new_tokens, temperature=1.0, top_k=None, seed=None):
        self.prompts.append(list(tokens))
        yield from self.stream[:max_new_tokens]


GEN = tasks.GenExample("0", "Question: 3+2?\nAnswer:", " 3 + 2 = 5.\n#### 5", "5")


def test_backward_generation_writes_the_earlier_part_in_reading_order():
    tok = _Tok()
    earlier = tok.encode(" 3 + 2 = 5.\n")
    model = _StubModel([*reversed(earlier), 256, 1, 2])  # BOS: the document's start
    loaded = SimpleNamespace(model=model, tokenizer=tok, direction="backward", device=None)
    records, summary = scoring.evaluate_generation_task(loaded, [GEN], "backward", 64)
    assert model.prompts == [[256, *reversed(tok.encode("#### 5"))]]
    assert records[0]["output"] == " 3 + 2 = 5.\n"
    assert records[0]["reference"] == "Question: 3+2?\nAnswer: 3 + 2 = 5.\n"
    assert records[0]["answer_mentioned"] and 0 < records[0]["token_f1"] < 1
    assert summary["metric"] == "token_f1" and summary["answer_mentioned"] == 1.0


def test_forward_generation_exact_match_with_marker():
    tok = _Tok()
    model = _StubModel(tok.encode(" 3 + 2 = 5.\n#### 5") + [256])
    loaded = SimpleNamespace(model=model, tokenizer=tok, direction="bidirectional", device=None)
    records, summary = scoring.evaluate_generation_task(loaded, [GEN], "forward", 64)
    assert model.prompts[0][:2] == [256, 257]  # BOS, <|forward|>
    assert records[0]["exact_match"] and records[0]["token_f1"] == 1.0
    assert summary["exact_match"] == 1.0


def test_sequence_logprobs_do_not_depend_on_batch_padding():
    loaded = _loaded("forward")
    seqs = [[256, 1, 2, 3, 4, 5, 6], [256, 7, 8], [256, 9, 10, 11, 12]]
    masks = [[True] * len(s) for s in seqs]
    masks[0][1:4] = [False] * 3  # tokens 1-3 of the first sequence are context only
    batch = scoring.sequence_logprobs(loaded.model, seqs, masks, loaded.device, pad=256)
    alone = [scoring.sequence_logprobs(loaded.model, [s], [m], loaded.device, pad=256)[0]
             for s, m in zip(seqs, masks, strict=True)]
    assert batch == pytest.approx(alone, rel=1e-5, abs=1e-5)
    assert batch[0] == pytest.approx(_manual(loaded.model, seqs[0], range(4, 7)), rel=1e-4,
                                     abs=1e-4)
