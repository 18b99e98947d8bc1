"""Token order: the one module that knows what forward, backward and bidirectional mean.

Text is tokenized in reading order first; direction is applied to token ids, one document at a
time, before packing (DESIGN.md §1): forward ``BOS t1 … tn``, backward ``BOS tn … t1``,
bidirectional ``BOS <|forward|> t1 … tn`` or ``BOS <|backward|> tn … t1`` per document
(backward with probability ``mix``); the loss is on every target but the marker.

Every function here is pure. ``to_reading_order(encode_document(doc, d, ...), d) == doc`` for
every direction, and the same holds for conversations. Nothing else in backlm reverses tokens.
Functions take a :class:`Direction`; this module, the one that owns the names, also reads a
name given to it (a hub card's snippet passes the one its weights' header holds).

Masks are per position of the model-order sequence: ``mask[i]`` says whether token ``i`` counts
as a training target when something precedes it. A document's BOS is a target inside a packed
row (predicting it means predicting where the previous document ends in the model's order);
the direction marker never is, because the user picks the direction and the model must not be
trained to guess it. After packing, ``targets = ids[1:]`` and ``target_mask = mask[1:]``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backlm.errors import UserError


class Direction(str, enum.Enum):
    """The order a model reads and writes in."""

    FORWARD = "forward"
    BACKWARD = "backward"
    BIDIRECTIONAL = "bidirectional"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def parse(cls, value: str | Direction) -> Direction:
        """Parse a user-given direction name; unknown names raise :class:`UserError`."""
        if isinstance(value, Direction):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            names = ", ".join(d.value for d in cls)
            raise UserError(f"unknown direction {value!r}: choose one of {names}") from None

    @property
    def orders(self) -> tuple[Direction, ...]:
        """The concrete orders this direction trains on (both for bidirectional)."""
        return ORDERS if self is Direction.BIDIRECTIONAL else (self,)

    @property
    def arrow(self) -> str:
        """The arrow shown beside the name: → forward, ← backward, ↔ bidirectional."""
        return {"forward": "→", "backward": "←", "bidirectional": "↔"}[self.value]

    @property
    def writes_at(self) -> str:
        """Where text written in this concrete order goes in reading-order text: at the ``end``
        forward, at the ``start`` backward (a backward conversation grows toward its beginning)."""
        return "end" if _concrete(self) is Direction.FORWARD else "start"

    @property
    def opposite(self) -> Direction:
        """The other concrete order (forward <-> backward)."""
        return Direction.BACKWARD if _concrete(self) is Direction.FORWARD else Direction.FORWARD


ORDERS = (Direction.FORWARD, Direction.BACKWARD)
"""The two concrete orders, forward first."""

NAME_PATTERN = "|".join(d.value for d in Direction)
"""A regular-expression alternative matching any direction name (experiment tags use it)."""


def parse_orders(text: str | Sequence[str], flag: str = "--directions") -> list[Direction]:
    """Concrete orders from a comma list or a list of names (``forward,backward``), each once,
    in the given order; a bidirectional, unknown or empty list names ``flag`` in its error."""
    use = "use forward, backward or forward,backward"
    out = []
    for name in filter(None, (n.strip() for n in (text.split(",") if isinstance(text, str)
                                                  else text))):
        try:
            order = Direction.parse(name)
        except UserError:
            raise UserError(f"unknown direction {name!r} in {flag}: {use}") from None
        if order is Direction.BIDIRECTIONAL:
            raise UserError(f"{flag} takes forward and/or backward: a bidirectional model is "
                            "evaluated with the marker of each")
        out.append(order)
    if not out:
        raise UserError(f"{flag} is empty: {use}")
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens the order transforms insert or recognise."""

    bos: int
    forward: int
    backward: int
    user_start: int = -1
    user_end: int = -1
    assistant_start: int = -1
    assistant_end: int = -1

    def marker(self, order: Direction) -> int:
        """The direction-marker token id for a concrete order."""
        return self.forward if _concrete(order) is Direction.FORWARD else self.backward


def _concrete(order: Direction) -> Direction:
    if (order := Direction.parse(order)) is Direction.BIDIRECTIONAL:
        raise ValueError("a concrete order (forward or backward) is required here")
    return order


def model_order(tokens: Sequence[int] | np.ndarray, order: Direction):
    """Put reading-order ``tokens`` into a concrete model ``order`` (its own inverse).

    Lists come back as lists; NumPy arrays as arrays (a reversed view, no copy).
    """
    backward = _concrete(order) is Direction.BACKWARD
    if isinstance(tokens, np.ndarray):
        return tokens[::-1] if backward else tokens
    return list(reversed(tokens)) if backward else list(tokens)


# --- per-document choice for bidirectional runs -------------------------------------------

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def document_order(direction: Direction, doc_index: int, seed: int = 0, mix: float = 0.5
                   ) -> Direction:
    """The concrete order of document number ``doc_index`` in a run.

    Forward and backward runs return their own order. Bidirectional runs draw backward with
    probability ``mix`` from a generator seeded by ``(seed, doc_index)``: the choice depends on
    the document's place in the stream, not on batching, ranks or resumes.
    """
    if (direction := Direction.parse(direction)) is not Direction.BIDIRECTIONAL:
        return direction
    if not 0.0 <= mix <= 1.0:
        raise UserError(f"mix must be between 0 and 1, got {mix}")
    h = _splitmix64(_splitmix64(seed & _MASK64) ^ (doc_index & _MASK64))
    return Direction.BACKWARD if (h >> 11) * (1.0 / (1 << 53)) < mix else Direction.FORWARD


# --- documents ------------------------------------------------------------------------------


def encode_document(
    tokens: Sequence[int], direction: Direction, ids: SpecialIds, order: Direction | None = None,
) -> tuple[list[int], list[bool]]:
    """Turn one reading-order document into a model-order sequence and its target mask.

    ``order`` picks the concrete order of a bidirectional document (see
    :func:`document_order`); it must be omitted or equal to ``direction`` otherwise.
    """
    seq, mask = encode_document_array(np.asarray(tokens, dtype=np.int64), direction, ids, order)
    return seq.tolist(), mask.tolist()


def encode_document_array(
    tokens: np.ndarray, direction: Direction, ids: SpecialIds, order: Direction | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`encode_document` on an int64 array, for the data loader's hot path."""
    concrete = _resolve_order(direction, order)
    head = prefix_length(direction)
    seq, mask = np.empty(len(tokens) + head, dtype=np.int64), np.ones(len(tokens) + head, bool)
    seq[0] = ids.bos
    if head == 2:  # the marker: given, never a target
        seq[1], mask[1] = ids.marker(concrete), False
    seq[head:] = model_order(tokens, concrete)
    return seq, mask


def encode_for(tokens: Sequence[int] | np.ndarray, model_direction: Direction,
               order: Direction, ids: SpecialIds):
    """Reading-order ``tokens`` as a model of ``model_direction`` reads them in the concrete
    ``order``: any model can be asked any order (a bidirectional one gets ``order``'s marker).
    Lists give lists (:func:`encode_document`), arrays arrays (:func:`encode_document_array`)."""
    if Direction.parse(model_direction) is Direction.BIDIRECTIONAL:
        direction, concrete = Direction.BIDIRECTIONAL, _concrete(order)
    else:
        direction, concrete = _concrete(order), None
    encode = encode_document_array if isinstance(tokens, np.ndarray) else encode_document
    return encode(tokens, direction, ids, concrete)


# --- pieces: the same reading-order spans in every direction --------------------------------

HEAD_SLOTS = 2
"""Tokens each piece of a document reserves before its body, in packed rows and evaluation
windows alike: BOS and the direction marker's slot. Forward and backward pieces leave the
slot unused, so the three directions cut documents into the same reading-order spans and
make the same packing decisions (DESIGN.md §1)."""


def body_capacity(seq_len: int) -> int:
    """The most body tokens one piece holds in a model that reads ``seq_len`` tokens."""
    return seq_len + 1 - HEAD_SLOTS


def piece_spans(length: int, capacity: int) -> list[tuple[int, int]]:
    """Reading-order ``(start, end)`` spans that cut a ``length``-token document into pieces
    of at most ``capacity`` tokens, front to back. Cut before any order is applied, so every
    direction gets the same spans; each piece then becomes a sequence of its own (own BOS)."""
    if capacity < 1:
        raise ValueError(f"a piece must hold at least one token, got capacity {capacity}")
    return [(s, min(s + capacity, length)) for s in range(0, length, capacity)]


def _resolve_order(direction: Direction, order: Direction | None) -> Direction:
    if (direction := Direction.parse(direction)) is Direction.BIDIRECTIONAL:
        if order is None:
            raise ValueError("a bidirectional document needs a concrete order")
        return _concrete(order)
    if order is not None and Direction.parse(order) is not direction:
        raise ValueError(f"order {order} conflicts with direction {direction.value}")
    return direction


def prefix_length(direction: Direction) -> int:
    """Number of non-content tokens before a document's body (BOS, and the marker)."""
    return 2 if Direction.parse(direction) is Direction.BIDIRECTIONAL else 1


def read_order_of(seq: Sequence[int], direction: Direction, ids: SpecialIds) -> Direction:
    """The concrete order of a model-order sequence (read from its marker if bidirectional)."""
    if (direction := Direction.parse(direction)) is not Direction.BIDIRECTIONAL:
        return direction
    return Direction.FORWARD if seq[_marker_at(seq, ids)] == ids.forward else Direction.BACKWARD


def _marker_at(seq: Sequence[int], ids: SpecialIds) -> int:
    start = 1 if len(seq) and seq[0] == ids.bos else 0
    if len(seq) <= start or seq[start] not in (ids.forward, ids.backward):
        raise ValueError("bidirectional sequence has no direction marker after BOS")
    return start


def to_reading_order(seq: Sequence[int], direction: Direction, ids: SpecialIds) -> list[int]:
    """Return any model-order sequence (with or without its BOS/marker) to reading order.

    The inverse of :func:`encode_document` and :func:`encode_conversation`: BOS and the
    direction marker are dropped, and backward bodies are reversed. A piece of a document
    comes back as its reading-order span.
    """
    concrete = read_order_of(seq, direction, ids)
    bos = 1 if len(seq) and seq[0] == ids.bos else 0
    return model_order(seq[bos + prefix_length(direction) - 1:], concrete)  # marker dropped too


def eval_orders(direction: Direction) -> list[tuple[str, Direction]]:
    """What validation measures, as ``(label, concrete order)``: the run's own order (label
    ``""``), or each order of a bidirectional run (labels ``forward``, ``backward``)."""
    if (direction := Direction.parse(direction)) is Direction.BIDIRECTIONAL:
        return [(o.value, o) for o in direction.orders]
    return [("", direction)]


def kept_window(tokens: Sequence[int], order: Direction, length: int) -> list[int]:
    """The reading-order part of a document that a model-order crop to ``length`` keeps.

    Its first ``length`` tokens going forward, its last ``length`` going backward: the window
    a 5CAT probe shows a model of ``order``, starting where its sequences start (5CAT compares
    orders within one model, always over this same window).
    """
    return model_order(model_order(tokens, order)[: max(0, length)], order)


def relabel(seq: Sequence[int], ids: SpecialIds, order: Direction) -> list[int]:
    """A bidirectional model-order sequence with its marker replaced by ``order``'s marker.

    Only the marker changes, so the body keeps the order it was encoded in: 5CAT uses this to
    show a model a body under the wrong marker. Relabelling with the original order undoes it.
    """
    start = _marker_at(seq, ids)
    return [*seq[:start], ids.marker(order), *seq[start + 1:]]


# --- conversations --------------------------------------------------------------------------


class Role(enum.IntEnum):
    """Whose turn a conversation token belongs to."""

    NONE = 0
    USER = 1
    ASSISTANT = 2


class Part(enum.IntEnum):
    """Where in its turn a conversation token sits."""

    CONTENT = 0
    OPEN = 1  # the turn's start tag in reading order
    CLOSE = 2  # the turn's end tag in reading order


TRAIN_ON = ("assistant", "user", "all")


def turn_roles(order: Direction) -> tuple[Role, Role]:
    """``(given, written)`` in a concrete ``order``: forward the person gives the user turn and
    the model writes the assistant's; backward the person gives the ending (the assistant's
    turn) and the model writes the user turn that came before it."""
    forward = _concrete(order) is Direction.FORWARD
    return (Role.USER, Role.ASSISTANT) if forward else (Role.ASSISTANT, Role.USER)


def trained_roles(order: Direction, train_on: str | None = None) -> frozenset[Role]:
    """Roles whose turns carry loss: by default the turns the model writes in ``order``
    (:func:`turn_roles`); ``train_on`` overrides."""
    if train_on is None:
        train_on = turn_roles(order)[1].name.lower()
    if train_on not in TRAIN_ON:
        raise UserError(f"unknown train_on {train_on!r}: choose one of {', '.join(TRAIN_ON)}")
    if train_on == "all":
        return frozenset({Role.USER, Role.ASSISTANT})
    return frozenset({Role.ASSISTANT if train_on == "assistant" else Role.USER})


def conversation_mask(
    roles: Sequence[int], parts: Sequence[int], order: Direction, train_on: str | None = None
) -> list[bool]:
    """Reading-order target mask of a conversation for a model writing in ``order``.

    A written turn's content counts, plus the tag that ends the turn in the model's order:
    the closing tag going forward, the opening tag going backward (reversal makes each
    opening tag the last token the model writes for that turn).
    """
    concrete = _concrete(order)
    roles_on = trained_roles(concrete, train_on)
    last_tag = Part.CLOSE if concrete is Direction.FORWARD else Part.OPEN
    return [
        Role(r) in roles_on and (Part(p) is Part.CONTENT or Part(p) is last_tag)
        for r, p in zip(roles, parts, strict=True)
    ]


def encode_conversation(
    tokens: Sequence[int], roles: Sequence[int], parts: Sequence[int], direction: Direction,
    ids: SpecialIds, order: Direction | None = None, train_on: str | None = None,
) -> tuple[list[int], list[bool]]:
    """Turn a reading-order rendered conversation (no BOS) into model order with its mask.

    The whole token sequence is reversed for backward, so the last turn comes first and each
    closing tag opens its turn; bidirectional conversations carry the (masked) marker after
    BOS, like documents.
    """
    concrete = _resolve_order(direction, order)
    mask = conversation_mask(roles, parts, concrete, train_on)
    body = model_order(tokens, concrete)
    body_mask = model_order(mask, concrete)
    head = [ids.bos, ids.marker(concrete)][:prefix_length(direction)]  # BOS, and the marker
    return [*head, *body], [False] * len(head) + body_mask


def turn_prompt(
    context: Sequence[int], write: Role, direction: Direction, ids: SpecialIds,
    order: Direction | None = None,
) -> tuple[list[int], int]:
    """Model-order prompt asking for one turn of role ``write``, and the token that ends it.

    ``context`` is reading-order rendered turns (no BOS): those before the turn to write going
    forward, those after it going backward (the backward model is given the ending and writes
    what came before). The prompt ends with the tag that opens the written turn in the model's
    order; generation stops at the tag that closes it.
    """
    concrete = _resolve_order(direction, order)
    head = [ids.bos, ids.marker(concrete)][:prefix_length(direction)]  # BOS, and the marker
    start, end = ((ids.user_start, ids.user_end) if write is Role.USER
                  else (ids.assistant_start, ids.assistant_end))
    if concrete is Direction.FORWARD:
        return [*head, *context, start], end
    return [*head, *model_order(list(context), concrete), end], start


def written_to_reading_order(written: Sequence[int], order: Direction) -> list[int]:
    """A generated turn's content (stop tag excluded) in reading order."""
    return list(model_order(list(written), _concrete(order)))
