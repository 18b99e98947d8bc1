"""BatchDecoder (the server's continuous batching): rows at different positions step together
and each gets the logits it would get alone; a released slot is reused cleanly; the fused C
step and the per-row forward (no C kernels, GPU) agree; misuse is refused."""

from __future__ import annotations

import pytest
import torch

from backlm.model import native
from backlm.model.decode import BatchDecoder, Decoder
from tests.model.test_gpt import make_model

PROMPTS = [[5, 17, 42, 7, 99], [1, 2, 3], [250, 9, 9, 31, 2, 8, 8, 1, 4]]


def _alone(model, prompt: list[int], fed: list[int]) -> list[torch.Tensor]:
    """Logits after the prompt, then after each fed token: one row, the model's forward."""
    with torch.inference_mode():
        dec = Decoder(model, 48, fused=False)
        out = [dec.prefill(prompt)[0].clone()]
        out += [dec.step(t)[0].clone() for t in fed]
    return out


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "forward"])
def test_rows_at_different_positions_step_as_if_alone(fused):
    if fused and native.native_kernels() is None:
        pytest.skip("the C kernels are not built here")
    model = make_model().eval()
    batch = BatchDecoder(model, 48, slots=4, fused=fused)
    assert batch.fused == fused and batch.free == 4
    fed = {0: [3, 4, 5, 6, 7, 8], 1: [9, 10, 11, 12, 13], 2: [14, 15, 16, 17]}
    want = {i: _alone(model, PROMPTS[i], fed[i]) for i in fed}
    slots, got = {}, {i: [] for i in fed}
    for i in fed:
        slot, logits = batch.add(PROMPTS[i])
        slots[i] = slot
        got[i].append(logits.clone())
    assert batch.free == 1
    # a step of every row, then of some rows only, in another order
    for rows in ([0, 1, 2], [2, 0], [1, 0, 2], [0, 1, 2], [1, 0]):
        toks = [fed[i][len(got[i]) - 1] for i in rows]
        out = batch.step([slots[i] for i in rows], toks)
        assert out.shape == (len(rows), model.cfg.vocab_size)
        for j, i in enumerate(rows):
            got[i].append(out[j].clone())
    for i in fed:
        for a, b in zip(got[i], want[i], strict=False):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert [int(x.argmax()) for x in got[i]] == [int(x.argmax()) for x in want[i][:len(got[i])]]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "forward"])
def test_a_released_slot_is_reused_as_new(fused):
    if fused and native.native_kernels() is None:
        pytest.skip("the C kernels are not built here")
    model = make_model().eval()
    batch = BatchDecoder(model, 32, slots=2, fused=fused)
    a, _ = batch.add(PROMPTS[2])  # a long row, so stale keys would be seen if kept
    b, _ = batch.add(PROMPTS[0])
    batch.step([a, b], [1, 2])
    batch.release(a)
    assert batch.free == 1
    c, first = batch.add(PROMPTS[1])
    assert c == a
    out = batch.step([c, b], [9, 3])
    want = _alone(model, PROMPTS[1], [9])
    torch.testing.assert_close(first, want[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[0], want[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], _alone(model, PROMPTS[0], [2, 3])[2], rtol=1e-4, atol=1e-4)


def test_misuse_is_refused():
    model = make_model().eval()
    batch = BatchDecoder(model, 6, slots=1)
    with pytest.raises(ValueError, match="holds no row"):
        batch.step([0], [1])
    slot, _ = batch.add([1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="slots are taken"):
        batch.add([1])
    with pytest.raises(ValueError, match="one per distinct slot"):
        batch.step([slot, slot], [1, 2])
    batch.step([slot], [6])
    with pytest.raises(ValueError, match="KV cache full"):
        batch.step([slot], [7])
    batch.release(slot)
    with pytest.raises(ValueError, match="no row to release"):
        batch.release(slot)
    with pytest.raises(ValueError, match="max_len"):
        batch.add(list(range(7)))
    assert batch.free == 1
