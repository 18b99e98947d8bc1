"""The reversal probe's measurements on the session's tiny forward, backward and bidirectional
models: which probes each direction answers and how, ranks and exact match computed right,
the teacher-forced exact match equal to what the generation engine writes."""

from __future__ import annotations

import pytest

from backlm.data.facts import Fact, generate
from backlm.direction import Direction
from backlm.evaluation import reversal as R
from tests.helpers import use_world

FACT = Fact("Zora", "Quillin", "composer", "Velm Tharo")


@pytest.fixture(scope="module")
def models(compare_world, phase_world):
    """The compare world's forward ``f0``, backward ``b0`` and bidirectional ``bi0``, loaded."""
    from backlm.experiment import load_model

    with pytest.MonkeyPatch.context() as mp:
        use_world(mp, phase_world, compare_world)
        return {d: load_model(compare_world / name, device="cpu")
                for d, name in (("forward", "f0"), ("backward", "b0"), ("bidirectional", "bi0"))}


def test_each_direction_answers_by_its_own_means():
    got = {d: [(p.flow, p.phrasing, p.order.value) for p in R.probes(Direction(d))]
           for d in ("forward", "backward", "bidirectional")}
    assert got["forward"] == [("A→B", "statement", "forward"), ("B→A", "reversed", "forward")]
    assert got["backward"] == [("B→A", "statement", "backward"),
                               ("A→B", "reversed", "backward")]
    assert got["bidirectional"] == got["forward"] + got["backward"]


def test_forward_is_given_the_beginning_and_backward_the_end():
    fwd, rev = R.probes(Direction.FORWARD)
    assert fwd.split(FACT) == ("Zora Quillin is the composer of", " Velm Tharo")
    assert rev.split(FACT) == ("The composer of Velm Tharo is", " Zora Quillin")  # the curse
    bwd, brev = R.probes(Direction.BACKWARD)
    assert bwd.split(FACT) == (" is the composer of Velm Tharo.", "Zora Quillin")
    assert brev.split(FACT) == (" is Zora Quillin.", " Velm Tharo")


def test_rank_summary_and_chance():
    assert R.rank_of([-1.0, -2.0, -3.0]) == 1
    assert R.rank_of([-2.0, -1.0, -3.0]) == 2
    assert R.rank_of([-1.0, -1.0]) == 2  # a tie counts against the right answer
    s = R.summarise([{"em": True, "rank": 1}, {"em": False, "rank": 4}])
    assert s == {"n": 2, "em": 0.5, "top1": 0.5, "mrr": pytest.approx(0.625)}
    assert R.chance(4) == {"top1": 0.25, "mrr": pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)}


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_the_candidate_is_the_tail_of_the_model_order_sequence(models, direction):
    loaded = models[direction]
    ids = loaded.tokenizer.special_ids
    for probe in R.probes(loaded.direction):
        given, cand = [10, 11, 12], [20, 21]
        (seq, n), = R._rows(loaded, given, [cand], probe.order)
        assert n == 2 and seq[0] == ids.bos
        if direction == "bidirectional":
            assert seq[1] == ids.marker(probe.order)
        backward = probe.order is Direction.BACKWARD
        assert seq[-2:] == ([21, 20] if backward else [20, 21])
        assert seq[-5:-2] == ([12, 11, 10] if backward else [10, 11, 12])


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_shapes_on_a_tiny_model(models, direction):
    loaded = models[direction]
    fact_set = generate(5, 4, seed=1)
    out = R.evaluate_reversal(loaded, fact_set, k=3, seed=1, samples=1)
    assert len(out) == (4 if direction == "bidirectional" else 2)
    for entry in out:
        assert set(entry["splits"]) == {"facts", "controls"}
        for name, n in (("facts", 5), ("controls", 4)):
            part = entry["splits"][name]
            assert part["summary"]["n"] == n and len(part["records"]) == n
            assert all(1 <= r["rank"] <= 3 and isinstance(r["em"], bool)
                       for r in part["records"])
            # the engine's greedy answer agrees with the teacher-forced one
            assert all(r["engine_em"] == r["em"] for r in part["records"] if "written" in r)


def test_a_model_that_knows_every_fact_scores_top(models, monkeypatch):
    """Score the right candidate (row 0 of each fact) best and its tokens as the top choice:
    every rank is 1 and every answer exact; the wrong one best: rank k, nothing exact."""
    loaded = models["forward"]
    k = 4
    for right in (True, False):
        def fake(_loaded, rows, right=right):
            return [((0.0 if right else -9.0) if i % k == 0 else -1.0, right and i % k == 0)
                    for i in range(len(rows))]

        monkeypatch.setattr(R, "score_rows", fake)
        records = R.probe_split(loaded, R.probes(loaded.direction)[0], generate(6, 6).facts, k,
                                seed=0, samples=0)
        s = R.summarise(records)
        assert (s["em"], s["top1"], s["mrr"]) == ((1.0, 1.0, 1.0) if right else (0.0, 0.0, 1 / k))


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_teacher_forced_greedy_equals_the_engine(models, direction):
    """What the generation engine writes greedily is, scored, the top choice at every token
    (and a changed token is not)."""
    from backlm.direction import encode_for, model_order

    loaded = models[direction]
    order = Direction(direction)
    given = loaded.tokenizer.encode("The composer of Velm Tharo is")
    seq, _ = encode_for(given, loaded.direction, order, loaded.tokenizer.special_ids)
    written = model_order(list(loaded.model.generate(seq, 3, temperature=0.0)), order)
    (logp, top), = R.score_rows(loaded, R._rows(loaded, given, [written], order))
    assert top and logp < 0
    other = [(t + 1) % loaded.model.cfg.vocab_size for t in written]
    assert R.score_rows(loaded, R._rows(loaded, given, [other], order))[0][1] is False
