"""Check that prepared batches really are in the declared direction.

Packs a few batches exactly as training would, then for every piece in every row checks the
BOS and marker positions, that the marker's target is masked, and that turning the
model-order tokens back to reading order reproduces exactly the reading-order span of the
source document the piece claims. It also packs the same batches in the other directions:
each row must hold the same reading-order spans in all three (DESIGN.md §1), so a comparison
between directions compares direction alone.

Independently of :mod:`backlm.direction`, a bigram fitted on raw reading-order text scores
every document body as is and reversed (:mod:`backlm.data.ngram`): forward bodies must read
forward and backward bodies backward, so even a bug shared by the transform and its inverse
is caught.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backlm.data.loader import PackedLoader
from backlm.data.ngram import DirectionSignal, direction_signals, fit_dataset
from backlm.data.shards import list_shards
from backlm.direction import (
    Direction,
    prefix_length,
    read_order_of,
    to_reading_order,
)
from backlm.errors import UserError
from backlm.model import IGNORE_INDEX


@dataclass
class Check:
    """One verified property: how many cases were checked and how many failed."""

    name: str
    checked: int = 0
    failed: int = 0

    @property
    def ok(self) -> bool:
        return self.checked > 0 and self.failed == 0

    def record(self, passed: bool) -> None:
        self.checked += 1
        self.failed += 0 if passed else 1


@dataclass
class DecodedRow:
    """A packed row shown two ways: as the model reads it, and back in reading order."""

    model_order: str
    reading_order: str
    documents: int


@dataclass
class DiagnoseReport:
    """Result of :func:`diagnose`."""

    direction: Direction
    split: str
    rows: int
    tokens: int
    target_fraction: float
    backward_fraction: float | None
    checks: list[Check] = field(default_factory=list)
    samples: list[DecodedRow] = field(default_factory=list)
    signals: list[DirectionSignal] = field(default_factory=list)  # n-gram, per declared order
    ngram_tokens: int = 0  # reading-order tokens the bigram was fitted on

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks) and not any(s.contradicts for s in self.signals)


def diagnose(
    dataset_dir: Path,
    tokenizer,
    direction: Direction,
    *,
    split: str = "val",
    batches: int = 4,
    batch_size: int = 8,
    seq_len: int = 256,
    seed: int = 0,
    mix: float = 0.5,
    show: int = 3,
    ngram_chars: int = 2_000_000,
) -> DiagnoseReport:
    """Pack ``batches`` batches of ``split`` in ``direction`` and verify them document by document.

    ``ngram_chars`` characters of train text fit the bigram of the direction signal (0: off).
    """
    from backlm.data.shards import SPLITS

    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    ids = tokenizer.special_ids

    def packer(d: Direction) -> PackedLoader:
        return PackedLoader(list_shards(dataset_dir, split), tokenizer, d,
                            batch_size=batch_size, seq_len=seq_len, seed=seed, mix=mix,
                            track=True, loop=False, docs_per_batch=64, buffer_docs=64)

    loader = packer(direction)
    others = [packer(d) for d in Direction if d is not direction]
    checks = {n: Check(n) for n in (
        "row starts with BOS", "one BOS per piece", "direction marker after BOS",
        "marker target masked", "piece is its reading-order span",
        "same spans in every direction",
    )}
    rows, tokens, targets, orders = 0, 0, 0, []
    bodies: list[tuple[Direction, list[int]]] = []  # (declared order, body in model order)
    samples: list[DecodedRow] = []
    for _ in range(batches):
        try:
            batch = loader.next_batch()
        except StopIteration:
            break
        spans = [[(k, a, b) for k, a, b, _ in row] for row in loader.provenance]
        for other in others:
            try:
                other.next_batch()
                same = spans == [[(k, a, b) for k, a, b, _ in row] for row in other.provenance]
            except StopIteration:
                same = False
            checks["same spans in every direction"].record(same)
        for r, prov in enumerate(loader.provenance):
            row = np.concatenate([batch.inputs[r], batch.targets[r, -1:]])
            tgt = np.concatenate([[IGNORE_INDEX], batch.targets[r]])
            checks["row starts with BOS"].record(int(row[0]) == ids.bos)
            texts = loader.texts_for([k for k, *_ in prov])
            lengths = [n for *_, n in prov]
            starts = np.cumsum([0, *lengths[:-1]])
            used = row[: sum(lengths)]
            checks["one BOS per piece"].record(
                int((used == ids.bos).sum()) == len(prov) and bool((row[starts] == ids.bos).all())
            )
            pieces = []
            for start, (_, first, last, n), text in zip(starts, prov, texts, strict=False):
                seg = [int(t) for t in row[start : start + n]]
                if direction is Direction.BIDIRECTIONAL:
                    if len(seg) < 2:
                        continue  # a row may end on a lone BOS: a boundary target, no marker
                    if seg[1] == IGNORE_INDEX:
                        # The row ends on the marker: it exists only as a (masked) target.
                        checks["marker target masked"].record(True)
                        continue
                    has = seg[1] in (ids.forward, ids.backward)
                    checks["direction marker after BOS"].record(has)
                    checks["marker target masked"].record(
                        start + 1 < len(tgt) and tgt[start + 1] == IGNORE_INDEX
                    )
                    if not has:
                        continue
                order = read_order_of(seg, direction, ids)
                orders.append(order)
                bodies.append((order, seg[prefix_length(direction):]))
                back = to_reading_order(seg, direction, ids)
                # sliced here from the source text, not from the loader's buffers: the check
                # must not share code with what it checks
                checks["piece is its reading-order span"].record(
                    back == tokenizer.encode(text)[first:last])
                pieces.append(tokenizer.decode(back))
            rows += 1
            tokens += len(row) - 1
            targets += int((batch.targets[r] != IGNORE_INDEX).sum())
            if len(samples) < show:
                samples.append(DecodedRow(
                    model_order=tokenizer.decode([int(t) for t in used]),
                    reading_order=" ‖ ".join(pieces), documents=len(prov),
                ))
    if direction is not Direction.BIDIRECTIONAL:
        for name in ("direction marker after BOS", "marker target masked"):
            checks.pop(name)
    back_frac = None
    if direction is Direction.BIDIRECTIONAL and orders:
        back_frac = sum(o is Direction.BACKWARD for o in orders) / len(orders)
    report = DiagnoseReport(
        direction=direction, split=split, rows=rows, tokens=tokens,
        target_fraction=targets / max(tokens, 1), backward_fraction=back_frac,
        checks=list(checks.values()), samples=samples,
    )
    if ngram_chars > 0:
        bigram = fit_dataset(dataset_dir, tokenizer, max_chars=ngram_chars)
        report.ngram_tokens = bigram.tokens
        report.signals = direction_signals(bigram, bodies)
    return report
