"""The measurements behind 5CAT's gates: per-target CE and the declared pass, rollout cuts and
the shared-cache rollout, the figures of one probe, and gate E's entropy-matched gap."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import torch

from backlm.config import ModelConfig
from backlm.direction import Direction
from backlm.fivecat.gates import (
    MIN_TF_ACC,
    ProbeFigures,
    declared_pass,
    generalisation,
    measure,
    one_cpu_thread,
    rollout_cuts,
    row_ce,
)
from backlm.fivecat.samples import build_probe
from backlm.fivecat.spec import Samples
from backlm.model.gpt import GPT

VOCAB = 263  # tests/conftest.py's byte tokenizer


def tiny_model() -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(depth=2, width=64, head_dim=32, vocab_size=VOCAB, seq_len=32)
    return GPT(cfg).eval()


def random_rows(n: int, length: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, length), generator=g).tolist()


def test_rollout_rewinding_one_kv_cache_equals_fresh_rollouts(forward):
    """Gate D's shared-cache rollouts give exactly what separate full forwards give, and at
    horizon 1 a rollout is teacher forcing."""
    import torch

    from backlm.experiment.loading import load_model
    from backlm.fivecat import load_spec
    from backlm.fivecat.gates import declared_pass, rollout_cuts, rollout_vs_teacher
    from backlm.fivecat.samples import build_probes

    lm = load_model(forward, device="cpu")
    spec = load_spec().with_max_samples(6)
    data = Path(lm.exp.metadata()["data_dir"])
    (probe,), _ = build_probes(data, lm.tokenizer, Direction.FORWARD, spec.samples, 64, ["val"])
    x = torch.tensor(probe.declared)
    _, _, top, _ = declared_pass(lm.model, x, probe.prefix, 8, contextlib.nullcontext)
    match, tf = rollout_vs_teacher(lm.model, x, top, probe.prefix, 1, contextlib.nullcontext)
    assert match == tf > 0
    h, hits, total = 4, 0, 0
    match, _ = rollout_vs_teacher(lm.model, x, top, probe.prefix, h, contextlib.nullcontext)
    with torch.no_grad():
        for cut in rollout_cuts(probe.prefix, x.size(1), h):
            seq = x[:, :cut]
            for _ in range(h):
                seq = torch.cat([seq, lm.model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
            hits += int((seq[:, cut:] == x[:, cut:cut + h]).sum())
            total += x[:, cut:cut + h].numel()
    assert match == hits / total


def test_rollout_cuts_run_back_from_the_end_over_three_quarters_of_the_body():
    assert rollout_cuts(prefix=1, length=33, horizon=4) == [29, 25, 21, 17, 13, 9]
    assert rollout_cuts(prefix=2, length=18, horizon=2) == [16, 14, 12, 10, 8, 6]  # ≥ 4 context
    assert rollout_cuts(prefix=1, length=6, horizon=4) == []  # no room for a rollout


def test_row_ce_is_the_model_loss_with_the_prefix_ignored():
    model, rows = tiny_model(), random_rows(3, 12)
    ce = row_ce(model, rows, first=2, chunk=2, autocast=contextlib.nullcontext)
    assert ce.shape == (3, 11) and (ce[:, 0] == 0).all() and (ce[:, 1:] > 0).all()
    x = torch.tensor(rows)
    with torch.no_grad():
        ref = model(x[:, :-1], x[:, 1:], loss_reduction="none")
    torch.testing.assert_close(ce[:, 1:], ref[:, 1:])


def test_declared_pass_agrees_with_row_ce():
    model, rows = tiny_model(), random_rows(3, 16)
    with torch.no_grad():
        ce, ent, top, offsets = declared_pass(model, torch.tensor(rows), 1, 2,
                                              contextlib.nullcontext)
        logits = model.logits(model.hidden(torch.tensor(rows)))
    ref = row_ce(model, rows, 1, 3, contextlib.nullcontext)
    torch.testing.assert_close(ce, ref, rtol=1e-4, atol=1e-4)
    assert ((ent >= 0) & (ent <= math.log(VOCAB) + 1e-4)).all()
    assert torch.equal(top, logits[:, :-1].argmax(-1))
    assert offsets.shape == (7,) and (offsets < 0).all()  # mean log-probs of offsets −3..+3


@pytest.mark.parametrize("direction, marker", [
    (Direction.FORWARD, None), (Direction.BIDIRECTIONAL, Direction.BACKWARD),
])
def test_probe_figures_are_consistent(byte_tok, direction, marker):
    samples = Samples(max_samples=3, window=24, min_tokens=12, ablate_last=4, horizon=2)
    docs = [byte_tok.encode(f"document {i} says " + "words and more words " * 2)
            for i in range(3)]
    probe = build_probe(docs, 24, "val", direction, marker, byte_tok.special_ids, samples)
    f = measure(tiny_model(), probe, samples)
    assert (f.split, f.marker, f.rows, f.length) == ("val", probe.marker, 3, probe.length)
    assert f.direction_margin == pytest.approx((f.ce_opposite - f.ce) / f.ce)
    assert f.offset_margin == pytest.approx(
        f.offset_logp[1] - max(v for k, v in f.offset_logp.items() if k != 1))
    assert f.rollout_ratio == pytest.approx(f.rollout_match / max(f.teacher_forced_acc,
                                                                  MIN_TF_ACC))
    assert f.entropy.numel() == f.token_ce.numel() == 3 * 24  # one per body target
    assert f.token_ce.mean().item() == pytest.approx(f.ce, rel=1e-5)
    if marker is None:
        assert f.ce_wrong_marker is None and f.marker_margin is None
    else:
        assert f.marker_margin == pytest.approx((f.ce_wrong_marker - f.ce) / f.ce)


def _figures(split: str, entropy: torch.Tensor, ce: torch.Tensor) -> ProbeFigures:
    return ProbeFigures(split, None, 1, 1, {}, 0.0, 0.0, 0.0, 0.0, None, None, 0.0, 0.0, 0.0,
                        0.0, 0.0, entropy=entropy, token_ce=ce)


def test_generalisation_compares_ce_at_matched_entropy():
    ent = torch.linspace(0, 4, 400)
    val = _figures("val", ent, 1.0 + ent)  # CE grows with the predictive entropy
    ood = _figures("ood", ent, 1.2 * (1.0 + ent))  # 20% worse at every entropy
    gap = generalisation(val, ood, Samples(entropy_bins=4, min_bin_tokens=16))
    assert gap["bins_used"] == 4 and gap["gap"] == pytest.approx(0.2)
    assert sum(b["val_tokens"] for b in gap["bins"]) == 400 == sum(b["ood_tokens"]
                                                                   for b in gap["bins"])
    assert (gap["reference"], gap["other"], gap["marker"]) == ("val", "ood", None)
    few = _figures("ood", ent[:10], 1.0 + ent[:10])  # too few tokens for any bin
    gap = generalisation(val, few, Samples(entropy_bins=4, min_bin_tokens=16))
    assert gap["bins_used"] == 0 and math.isnan(gap["gap"])


def test_one_cpu_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with one_cpu_thread(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), one_cpu_thread(torch.device("cpu")):
        raise RuntimeError
    assert torch.get_num_threads() == before
    with one_cpu_thread(torch.device("meta")):  # not a CPU: left alone
        assert torch.get_num_threads() == before
