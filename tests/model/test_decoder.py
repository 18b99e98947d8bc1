"""Decoding in the run's precision: a bf16 decoder's fused C step (AVX512-BF16 and the portable
path) follows the model's own bf16 autocast forward; fp32 stays fp32; the loader's choice of
precision; batched bf16 rows equal single ones; many greedy steps per C call equal one per call
and stop at a stop token."""

from __future__ import annotations

import pytest
import torch

from backlm.experiment.loading import decode_precision
from backlm.model import native
from backlm.model.decode import BatchDecoder, Decoder, decode_dtype, greedy_tokens, stream
from tests.model.test_gpt import greedy_uncached, make_model

needs_native = pytest.mark.skipif(native.native_kernels() is None,
                                  reason="the C kernels are not built here")
BF16 = torch.bfloat16


def _runs(isa: str) -> bool:
    """Whether this CPU runs the decoding kernel copy ``isa``."""
    if native.lib is None:
        return False
    try:
        native.lib.decode_isa(native.lib.decode_isa(isa))
    except ValueError:
        return False
    return True


@pytest.fixture(params=["avx512bf16", "generic"])
def kernels(request):
    if not _runs(request.param):
        pytest.skip(f"the {request.param} decoding kernels do not run here")
    previous = native.lib.decode_isa(request.param)
    yield request.param
    native.lib.decode_isa(previous)


@needs_native
def test_bf16_step_follows_the_models_bf16_forward(kernels):
    model = make_model().eval()
    prompt = [3, 1, 4]
    with torch.inference_mode():
        fused, ref = Decoder(model, 48, dtype=BF16), Decoder(model, 48, fused=False, dtype=BF16)
        assert fused.fused and fused.cache.k.dtype == BF16 and not ref.fused
        a, b = fused.prefill(prompt), ref.prefill(prompt)
        torch.testing.assert_close(a, b)
        # the same greedy tokens, each fed to both; below 16 keys the logits agree to fp32
        # noise (the same bf16 roundings); from 16 keys PyTorch's bf16 attention sums in another
        # order, and they stay within a few bf16 steps of the logits
        token = int(b.argmax())
        for i in range(40):
            a, b = fused.step(token), ref.step(token)
            if i < 12:
                assert int(a.argmax()) == int(b.argmax())
                torch.testing.assert_close(a, b, rtol=0, atol=1e-3)
            torch.testing.assert_close(a, b, rtol=2e-2, atol=0.1)
            token = int(b.argmax())
        torch.testing.assert_close(fused.cache.k.float(), ref.cache.k.float(), rtol=2e-2, atol=2e-2)


@needs_native
def test_greedy_in_bf16_equals_the_bf16_recompute_token_for_token():
    model = make_model().eval()
    prompt = [5, 17, 42]
    with torch.inference_mode():
        fused, ref = Decoder(model, 16, dtype=BF16), Decoder(model, 16, fused=False, dtype=BF16)
        got = list(greedy_tokens(fused, fused.prefill(prompt), 12))
        want = list(greedy_tokens(ref, ref.prefill(prompt), 12))
    assert got == want


def test_the_precision_is_the_models_unless_asked():
    model = make_model().eval()
    assert decode_dtype(model) == torch.float32 and Decoder(model, 8).dtype == torch.float32
    model.decode_dtype = BF16  # what the loader sets for a bf16 run
    assert Decoder(model, 8).dtype == BF16
    assert Decoder(model, 8, dtype=torch.float32).dtype == torch.float32
    assert decode_precision("bf16", "cpu", asked="fp32") == "fp32"
    assert decode_precision("fp32", "cpu") == "fp32"
    assert decode_precision("bf16", "cuda") == "bf16"
    assert decode_precision(None, "cuda") == "fp32"


@needs_native
def test_fp32_greedy_in_chunks_equals_full_recompute_and_stops_in_c():
    model = make_model().eval()
    prompt = [5, 17, 42, 7, 99]
    want = greedy_uncached(model, prompt, 45)
    assert list(stream(model, prompt, 45)) == want
    stop = want[20]
    got = list(stream(model, prompt, 45, stop=[stop]))
    assert got[-1] == stop  # the chunk ended at the stop token ...
    with torch.inference_mode():
        dec = Decoder(model, 64)
        tokens = list(greedy_tokens(dec, dec.prefill(prompt), 45, stop=[stop]))
    assert tokens == want[:want.index(stop) + 1]
    assert dec.cache.pos == len(prompt) + len(tokens) - 1  # ... and fed nothing after it


@needs_native
def test_batched_bf16_rows_equal_single_rows():
    model = make_model().eval()
    prompts = [[5, 17, 42, 7, 99], [1, 2, 3]]
    batch = BatchDecoder(model, 32, slots=3, dtype=BF16)
    assert batch.fused and batch.k.dtype == BF16
    slots = [batch.add(p)[0] for p in prompts]
    with torch.inference_mode():
        singles = [Decoder(model, 32, dtype=BF16) for _ in prompts]
        for d, p in zip(singles, prompts, strict=True):
            d.prefill(p)
        for step in range(6):
            out = batch.step(slots, [10 + step, 20 + step])
            for i, d in enumerate(singles):
                torch.testing.assert_close(out[i], d.step([10 + step, 20 + step][i])[0],
                                           rtol=1e-2, atol=0.05)


@needs_native
def test_rows_of_one_prompt_take_the_batched_fused_step():
    model = make_model().eval()
    with torch.inference_mode():
        dec, ref = Decoder(model, 24, rows=3), Decoder(model, 24, rows=3, fused=False)
        assert dec.fused
        torch.testing.assert_close(dec.prefill([1, 2, 3]), ref.prefill([1, 2, 3]))
        for t in range(5):
            toks = torch.tensor([t, 7 + t, 40 + t])
            torch.testing.assert_close(dec.step(toks), ref.step(toks), rtol=1e-4, atol=1e-4)
