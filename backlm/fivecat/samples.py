"""5CAT inputs: held-out documents turned into the probe sequences the gates score.

Every probe is one document window per row, all rows the same length, rendered by
:mod:`backlm.direction` exactly as training renders a (cropped) document: ``BOS [marker]
body``. For each window 5CAT also builds the same text in the opposite order, under the wrong
marker (bidirectional), and with the context of its last ``K`` targets shuffled or reversed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from backlm.data.shards import iter_texts
from backlm.direction import (
    Direction,
    SpecialIds,
    encode_document,
    kept_window,
    model_order,
    prefix_length,
    relabel,
)
from backlm.errors import UserError
from backlm.fivecat.spec import Samples

# The longest prefix (BOS + marker) of any direction: windows leave room for it, so rows of
# every direction hold the same text and fit in the model's seq_len.
MAX_PREFIX = 2


@dataclass
class Probe:
    """The rows one (held-out set, marker) pair is scored on; token ids in model order."""

    split: str
    marker: str | None  # the concrete order of a bidirectional model's probe, else None
    prefix: int  # tokens before the body (BOS, marker)
    declared: list[list[int]]
    opposite: list[list[int]]  # the same text in the other order (same marker)
    wrong_marker: list[list[int]] | None  # bidirectional: the body under the other marker
    shuffled: list[list[int]]  # context of the last K targets shuffled
    reversed: list[list[int]]  # context of the last K targets reversed

    @property
    def rows(self) -> int:
        """Documents in the probe."""
        return len(self.declared)

    @property
    def length(self) -> int:
        """Tokens per row (prefix + window)."""
        return len(self.declared[0])


def split_files(data_dir: Path, split: str) -> list[Path]:
    """The shards of ``split`` (may be empty)."""
    return sorted(Path(data_dir).glob(f"{split}_*.parquet"))


def read_documents(files: list[Path], tokenizer, samples: Samples, max_len: int) -> list[list[int]]:
    """Reading-order token lists of the first documents of ``files``, enough to choose from.

    Reading stops once ``max_samples`` documents reach ``max_len`` tokens, or after
    ``scan_docs`` documents: held-out sets of short documents get a shorter window instead.
    """
    docs: list[list[int]] = []
    batch: list[str] = []
    long_enough = 0

    def flush() -> None:
        nonlocal long_enough
        for toks in tokenizer.encode_batch(batch):
            docs.append(toks)
            long_enough += len(toks) >= max_len
        batch.clear()

    for path in files:
        for text in iter_texts(path):
            if text.strip():
                batch.append(text)
            if len(batch) >= 64:
                flush()
            if long_enough >= samples.max_samples or len(docs) >= samples.scan_docs:
                return docs
    flush()
    return docs


def choose_windows(docs: list[list[int]], samples: Samples, max_len: int, what: str
                   ) -> tuple[list[list[int]], int]:
    """Pick up to ``max_samples`` documents and a common window length for them.

    The length is the longest (up to ``max_len``) that ``max_samples`` documents reach, but
    never below ``min_tokens``; documents shorter than it are skipped, in stream order.
    """
    lengths = sorted((len(d) for d in docs), reverse=True)
    want = samples.max_samples
    if not lengths or lengths[min(len(lengths), 2) - 1] < samples.min_tokens:
        raise UserError(f"{what} has too little text for 5CAT: it needs at least 2 documents "
                        f"of {samples.min_tokens}+ tokens; add data or lower samples.min_tokens")
    length = min(max_len, max(samples.min_tokens, lengths[min(len(lengths), want) - 1]))
    chosen = [d for d in docs if len(d) >= length][:want]
    return chosen, length


def build_probe(windows_source: list[list[int]], length: int, split: str,
                direction: Direction, marker: Direction | None, ids: SpecialIds,
                samples: Samples) -> Probe:
    """Render every document of a set as the declared, opposite, wrong-marker and ablated rows.

    ``marker`` is the concrete order of a bidirectional probe (None otherwise); the window of a
    document is the part a model-order crop keeps (its beginning forward, its ending backward).
    """
    order = marker or direction
    declared, opposite, wrong, shuffled, reversed_ = [], [], [], [], []
    rng = random.Random(f"{samples.seed}:{split}:{order.value}")
    p = prefix_length(direction)
    cut = p + length - samples.ablate_last  # first of the last K targets
    for doc in windows_source:
        window = kept_window(doc, order, length)
        seq, _ = encode_document(window, direction, ids, marker)
        declared.append(seq)
        if marker:
            other, _ = encode_document(window, direction, ids, order.opposite)
            opposite.append(relabel(other, ids, marker))  # right marker, wrong order
            wrong.append(relabel(seq, ids, marker.opposite))  # right order, wrong marker
        else:
            opposite.append(encode_document(window, order.opposite, ids)[0])
        context = seq[p:cut]
        mixed = list(context)
        rng.shuffle(mixed)
        shuffled.append([*seq[:p], *mixed, *seq[cut:]])
        reversed_.append([*seq[:p], *model_order(context, Direction.BACKWARD), *seq[cut:]])
    return Probe(split, marker.value if marker else None, p, declared, opposite,
                 wrong if marker else None, shuffled, reversed_)


def build_probes(data_dir: Path, tokenizer, direction: Direction, samples: Samples,
                 seq_len: int, splits: list[str]) -> tuple[list[Probe], dict[str, dict]]:
    """Probes of every split in ``splits`` and every marker; also what was read per split."""
    max_len = min(samples.window, seq_len - MAX_PREFIX)
    if max_len < samples.ablate_last + samples.horizon + 8:
        raise UserError(f"5CAT needs windows of at least {samples.ablate_last + samples.horizon + 8} "
                        f"tokens; this model's seq_len is {seq_len}: lower samples.ablate_last "
                        "and samples.horizon in the 5CAT spec")
    probes, info = [], {}
    for split in splits:
        files = split_files(data_dir, split)
        docs = read_documents(files, tokenizer, samples, max_len)
        chosen, length = choose_windows(docs, samples, max_len, f"the {split} split of {data_dir}")
        info[split] = {"documents": len(chosen), "window": length, "read": len(docs)}
        markers = list(direction.orders) if direction is Direction.BIDIRECTIONAL else [None]
        for marker in markers:
            probes.append(build_probe(chosen, length, split, direction, marker,
                                      tokenizer.special_ids, samples))
    return probes, info
