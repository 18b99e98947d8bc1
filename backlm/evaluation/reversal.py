"""The reversal probe's measurements: does a model produce each side of a fact from the other?

A fact (:mod:`backlm.data.facts`) is said in two phrasings, the trained statement
``A is the Y of B.`` and the reversed ``The Y of B is A.``. Each *probe* gives a model one
side and asks for the entity on the side it writes, by the means its order has
(:attr:`backlm.direction.Direction.writes_at`): a forward order continues what it is given, so
it is asked for the sentence's last entity; a backward order writes what precedes what it is
given, so it is asked for the first. Per concrete order that makes two probes:

========  ==========================================  ==========================================
order     statement (the trained phrasing)            reversed phrasing (never trained)
========  ==========================================  ==========================================
forward   A→B: ``A is the Y of`` → B                   B→A: ``The Y of B is`` → A (Berglund's test)
backward  B→A: A ← ``is the Y of B.``                  A→B: B ← ``is A.``
========  ==========================================  ==========================================

A bidirectional model answers all four, one marker each: its statement probes cover both flows.
Two measures per fact, from one batched scoring pass: the ``rank`` of the right entity among
``k`` candidates (it and the entities of ``k − 1`` other facts of the same set) by the
log-probability of the candidate's tokens given the prompt in the model's order; and ``em``,
whether the greedy answer is exactly the entity's tokens, read teacher-forced from the same pass
(greedy decoding writes a sequence exactly when each of its tokens is the top choice after the
ones before). The first few facts of each probe are also written by the one generation engine
(:func:`backlm.evaluation.scoring.generate_written`), kept as samples with their own match. Controls, made the same way
but never trained, give the chance level of both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backlm.callbacks import Progress
from backlm.data.facts import Fact, FactSet, distractors, pieces
from backlm.direction import Direction, encode_for
from backlm.missing import mean_or_missing

SPLITS = ("facts", "controls")
BATCH_ROWS = 64  # candidate rows scored per forward pass
SAMPLES = 5  # facts per probe and set whose greedy answer the engine also writes


@dataclass(frozen=True)
class Probe:
    """One way of asking: the flow (which entity is asked for), the phrasing, the order."""

    flow: str  # "A→B" or "B→A"
    phrasing: str  # "statement" (trained) or "reversed"
    order: Direction  # the concrete order the model reads in

    @property
    def label(self) -> str:
        return f"{self.flow} · {self.phrasing} · {self.order}"

    def split(self, fact: Fact) -> tuple[str, str]:
        """``(given, answer)``: the text the model is given and the entity it must write."""
        before, first, between, second, after = pieces(fact, self.phrasing)
        if self.order.writes_at == "end":
            return before + first + between, second
        return between + second + after, first


def probes(direction: Direction) -> list[Probe]:
    """The probes a model of ``direction`` answers (see the module's table)."""
    out = []
    for order in direction.orders:
        forward = order.writes_at == "end"
        out += [Probe("A→B" if forward else "B→A", "statement", order),
                Probe("B→A" if forward else "A→B", "reversed", order)]
    return out


def chance(k: int) -> dict[str, float]:
    """What guessing scores among ``k`` candidates: top-1 1/k, reciprocal rank H_k/k."""
    return {"top1": 1 / k, "mrr": sum(1 / r for r in range(1, k + 1)) / k}


def rank_of(scores: Sequence[float]) -> int:
    """The rank (1 best) of candidate 0 among ``scores``; a tie counts against it."""
    return 1 + sum(s >= scores[0] for s in scores[1:])


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean exact match, top-1 and reciprocal rank over ``records`` (MISSING when none)."""
    n = len(records)
    return {"n": n, "em": mean_or_missing(sum(r["em"] for r in records), n),
            "top1": mean_or_missing(sum(r["rank"] == 1 for r in records), n),
            "mrr": mean_or_missing(sum(1 / r["rank"] for r in records), n)}


def _rows(loaded: Any, given: Sequence[int], candidates: Sequence[Sequence[int]],
          order: Direction) -> list[tuple[list[int], int]]:
    """Each candidate written beside the reading-order ``given`` tokens in ``order`` (after
    them forward, before them backward), as ``(model-order sequence, candidate length)``: the
    candidate's tokens are the sequence's last ones in both cases."""
    out = []
    for cand in candidates:
        tokens = [*given, *cand] if order.writes_at == "end" else [*cand, *given]
        seq, _ = encode_for(tokens, loaded.direction, order, loaded.tokenizer.special_ids)
        out.append((seq, len(cand)))
    return out


def score_rows(loaded: Any, rows: Sequence[tuple[list[int], int]]
               ) -> list[tuple[float, bool]]:
    """Per row: the log-probability of its last ``n`` tokens given what precedes them, and
    whether each of them is the model's top choice there: the greedy answer, teacher-forced
    (greedy decoding writes exactly these tokens if and only if it is)."""
    import numpy as np
    import torch

    out: list[tuple[float, bool]] = []
    pad = loaded.tokenizer.special_ids.bos
    for start in range(0, len(rows), BATCH_ROWS):
        chunk = rows[start:start + BATCH_ROWS]
        width = max(len(seq) for seq, _ in chunk) - 1
        x = np.full((len(chunk), width), pad, dtype=np.int64)
        for b, (seq, _) in enumerate(chunk):
            x[b, :len(seq) - 1] = seq[:-1]
        with torch.no_grad():
            ids = torch.from_numpy(x).to(loaded.device)
            logp = torch.log_softmax(loaded.model.logits(loaded.model.hidden(ids)), dim=-1)
        for b, (seq, n) in enumerate(chunk):
            pos = torch.arange(len(seq) - 1 - n, len(seq) - 1)
            target = torch.tensor(seq[len(seq) - n:])
            picked = logp[b, pos].cpu()
            out.append((float(picked.gather(1, target[:, None]).sum()),
                        bool((picked.argmax(dim=1) == target).all())))
    return out


def probe_split(loaded: Any, probe: Probe, facts: Sequence[Fact], k: int, seed: int,
                samples: int = SAMPLES, progress: Progress | None = None, label: str = ""
                ) -> list[dict[str, Any]]:
    """Per fact of one set: whether the greedy answer is exact, and the right entity's rank
    among ``k`` candidates; the first ``samples`` facts also keep the greedy answer the
    generation engine writes (``written``, with ``engine_em``)."""
    from backlm.evaluation.scoring import generate_written

    tok = loaded.tokenizer
    split = [probe.split(f) for f in facts]
    givens = [tok.encode(given) for given, _ in split]
    answers = [tok.encode(answer) for _, answer in split]
    others = distractors(len(facts), k, seed)
    rows = [row for i in range(len(facts)) for row in _rows(
        loaded, givens[i], [answers[i], *(answers[j] for j in others[i])], probe.order)]
    scored = score_rows(loaded, rows)
    records = []
    for i, (_, answer_text) in enumerate(split):
        mine = scored[i * k:(i + 1) * k]
        record = {"fact": i, "answer": answer_text, "em": mine[0][1],
                  "rank": rank_of([lp for lp, _ in mine])}
        if i < samples:
            written = generate_written(loaded, givens[i], probe.order, len(answers[i]))
            record.update(written=tok.decode(written), engine_em=written == answers[i])
        records.append(record)
        if progress is not None:
            progress(label or probe.label, i + 1, len(facts))
    return records


def evaluate_reversal(loaded: Any, fact_set: FactSet, k: int, seed: int = 0,
                      progress: Progress | None = None, samples: int = SAMPLES
                      ) -> list[dict[str, Any]]:
    """Every probe of the loaded model's direction on the facts and on the controls: one entry
    per probe with its records and point summaries per set (intervals are the caller's)."""
    out = []
    for probe in probes(loaded.direction):
        entry: dict[str, Any] = {"flow": probe.flow, "phrasing": probe.phrasing,
                                 "order": probe.order, "splits": {}}
        for name, facts in zip(SPLITS, (fact_set.facts, fact_set.controls), strict=True):
            records = probe_split(loaded, probe, facts, k, seed, samples, progress,
                                  label=f"{probe.label} · {name}")
            entry["splits"][name] = {"summary": summarise(records), "records": records}
        out.append(entry)
    return out
