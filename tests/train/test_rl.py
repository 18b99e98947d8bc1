"""RL: prompts in the model's order, rewards on reading-order text, seeded streams, group
sampling, and a policy-gradient step that raises the reward of what was rewarded."""

from __future__ import annotations

import pytest
import torch

from backlm.config import ModelConfig
from backlm.data.arith import Problem
from backlm.direction import Direction
from backlm.model.gpt import GPT
from backlm.tokenizer import Tokenizer
from backlm.train import rl


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(["What is 5 plus 7? The answer is 12."] * 20, vocab_size=300)


PROBLEM = Problem("What is 5 plus 7?", 12)


def test_forward_is_given_the_question_and_backward_the_answer(tok):
    sid = tok.special_ids
    prompt, stop = rl.prompt_for(tok, PROBLEM, "forward", Direction.FORWARD)
    assert prompt == [sid.bos, *tok.render_turn("user", PROBLEM.question), sid.assistant_start]
    assert stop == sid.assistant_end
    prompt, stop = rl.prompt_for(tok, PROBLEM, "backward", Direction.BACKWARD)
    answer = tok.render_turn("assistant", PROBLEM.answer_text)
    assert prompt == [sid.bos, *answer[::-1], sid.user_end] and stop == sid.user_start
    prompt, _ = rl.prompt_for(tok, PROBLEM, "bidirectional", Direction.BACKWARD)
    assert prompt[:2] == [sid.bos, sid.backward]


def test_rewards_read_the_written_turn_in_reading_order(tok):
    question = tok.encode("What is 5 plus 7?")
    assert rl.reward(tok, PROBLEM, Direction.BACKWARD, question[::-1]) == 1.0
    # the same tokens in the wrong order are not a question any more
    assert rl.reward(tok, PROBLEM, Direction.BACKWARD, question) < 1.0
    assert rl.reward(tok, PROBLEM, Direction.FORWARD, tok.encode("The answer is 12.")) == 1.0


def test_prompt_streams_are_seeded_resumable_and_distinct():
    a = rl.PromptStream(seed=3, stream=0, direction="bidirectional")
    first = [a.next_prompt() for _ in range(6)]
    state = a.state_dict()
    rest = [a.next_prompt() for _ in range(3)]
    b = rl.PromptStream(seed=3, stream=0, direction="bidirectional")
    assert [b.next_prompt() for _ in range(6)] == first
    c = rl.PromptStream(seed=3, stream=0, direction="bidirectional")
    c.load_state_dict(state)
    assert [c.next_prompt() for _ in range(3)] == rest
    other = rl.PromptStream(seed=3, stream=1, direction="bidirectional")
    assert [other.next_prompt() for _ in range(6)] != first
    assert {o for _, o, _ in first + rest} == {Direction.FORWARD, Direction.BACKWARD}


def test_group_sampling_stops_at_the_stop_token_and_is_seeded():
    torch.manual_seed(0)
    model = GPT(ModelConfig(depth=1, width=32, head_dim=16, vocab_size=40, seq_len=32)).eval()
    one = rl.sample_group(model, [1, 2, 3], 6, 10, 1.5, stop=7, seed=11)
    assert one == rl.sample_group(model, [1, 2, 3], 6, 10, 1.5, stop=7, seed=11)
    assert len(one) == 6 and all(1 <= len(s) <= 10 for s in one)
    assert all(7 not in s[:-1] for s in one)  # nothing after the stop
    assert len({tuple(s) for s in one}) > 1  # samples differ within the group
    greedy = rl.sample_group(model, [1, 2, 3], 2, 5, 0.0, stop=-1, seed=0)
    assert greedy[0] == greedy[1]


def test_the_batch_trains_only_the_sampled_tokens():
    x, y = rl._batch([9, 8, 7], [[1, 2], [3]], pad=0)
    assert x.tolist() == [[9, 8, 7, 1], [9, 8, 7, 0]]
    assert y.tolist() == [[-1, -1, 1, 2], [-1, -1, 3, -1]]


def test_a_policy_gradient_step_raises_the_likelihood_of_the_better_sample():
    """The loss RLPhase.loss builds (advantage × token loss) moves probability toward the
    sample with the higher reward."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(depth=1, width=32, head_dim=16, vocab_size=40, seq_len=32))
    prompt, good, bad = [1, 2], [5, 6], [8, 9]
    x, y = (torch.from_numpy(a) for a in rl._batch(prompt, [good, bad], pad=0))
    adv = torch.tensor([0.5, -0.5])

    def logp():
        with torch.no_grad():
            return -model(x, y, loss_reduction="none").sum(1)

    before = logp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        loss = (model(x, y, loss_reduction="none") * adv[:, None]).sum() / (y >= 0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = logp()
    assert after[0] > before[0] and after[1] < before[1]
