"""BPE tokenizer: trained with rustbpe, run through tiktoken, stored as plain JSON.

Text is always encoded in reading order (direction is applied to ids later, DESIGN.md §1).
``encode`` never produces special tokens, even for text that spells one out ("<|bos|>"):
special ids come only from :mod:`backlm.direction` and :func:`render_conversation`.

On disk a tokenizer is one JSON file, ``<dir>/backlm_tokenizer.json``: the split pattern,
every mergeable token as base64 in rank order, and the special tokens (no pickle, so loading a
tokenizer never runs code). The name is backlm's own: ``tokenizer.json`` is Hugging Face's
format (an exported folder holds one of those too, :mod:`backlm.hub.tokenizer_hf`). Folders
written before the rename hold backlm's format under ``tokenizer.json``; they still load.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from backlm.atomic import write_json
from backlm.direction import Part, Role, SpecialIds
from backlm.errors import UserError

SPECIAL_TOKENS = [
    "<|bos|>",
    "<|forward|>",
    "<|backward|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
]
# GPT-4 style split, with numbers split into runs of at most two digits (as nanochat does):
# fewer number tokens waste less of a small vocabulary.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
TOKENIZER_FILE = "backlm_tokenizer.json"
# the name backlm used before; still read when it holds backlm's format
LEGACY_TOKENIZER_FILE = "tokenizer.json"
FORMAT = "backlm-bpe"
FORMAT_VERSION = 1
DEFAULT_VOCAB_SIZE = 8192
DEFAULT_TRAIN_CHARS = 20_000_000
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide thread pool per size: starting threads per call would cost more than
    encoding a batch of short documents."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="backlm-tok")
    return _POOLS[threads]


class Tokenizer:
    """A byte-level BPE vocabulary plus backlm's special tokens, wrapping ``tiktoken``."""

    def __init__(self, pattern: str, ranks: Sequence[bytes], specials: dict[str, int]) -> None:
        import tiktoken

        self.pattern = pattern
        self.ranks = [bytes(b) for b in ranks]
        self.specials = dict(specials)
        missing = [name for name in SPECIAL_TOKENS if name not in self.specials]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens: {', '.join(missing)}")
        mergeable: dict[bytes, int] = {}
        for rank, token in enumerate(self.ranks):
            # BPE could in principle reach the same bytes by two merge paths; tiktoken needs
            # one rank per byte string, so the first (most frequent) merge wins.
            mergeable.setdefault(token, rank)
        self._enc = tiktoken.Encoding(
            name="backlm", pat_str=pattern, mergeable_ranks=mergeable, special_tokens=self.specials
        )
        self._byte_lengths: list[int] | None = None

    # --- training and storage ---------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
        """Train a BPE vocabulary of ``vocab_size`` ids in total, special tokens included.

        A corpus too small to supply every merge gives a smaller vocabulary; read the real
        size from :attr:`vocab_size`.
        """
        import rustbpe

        check_vocab_size(vocab_size)
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(
            iter(texts), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN
        )
        pairs = sorted((rank, bytes(tok)) for tok, rank in bpe.get_mergeable_ranks())
        if [rank for rank, _ in pairs] != list(range(len(pairs))):
            raise RuntimeError("rustbpe returned non-contiguous token ranks")
        ranks = [tok for _, tok in pairs]
        specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
        return cls(bpe.get_pattern(), ranks, specials)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready description :meth:`save` writes."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "vocab_size": self.vocab_size,
            "pattern": self.pattern,
            "special_tokens": self.specials,
            "ranks": [base64.b64encode(tok).decode("ascii") for tok in self.ranks],
        }

    def save(self, directory: str | Path) -> Path:
        """Atomically write ``<directory>/backlm_tokenizer.json``; returns its path."""
        path = Path(directory) / TOKENIZER_FILE
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load a tokenizer folder (or its file); bad files raise UserError."""
        path = Path(directory)
        if path.is_dir() or not path.suffix:
            path = tokenizer_file(path) or path / TOKENIZER_FILE
        if not path.is_file():
            raise UserError(
                f"no tokenizer at {path}: run `backlm data prepare` (or point to a dataset "
                "or experiment that has one)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls._from_dict(data)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"tokenizer file {path} is unreadable ({reason}): restore it from a copy, or, "
                "for a dataset's tokenizer, delete it and the next `backlm train` on that "
                "dataset trains a new one"
            ) from None

    @classmethod
    def _from_dict(cls, data: Any) -> Tokenizer:
        if isinstance(data, dict) and "model" in data and "added_tokens" in data:
            raise ValueError(f"a Hugging Face tokenizers file, not backlm's ({TOKENIZER_FILE})")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} tokenizer file")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported tokenizer format version {data.get('version')!r}")
        pattern, ranks_b64, specials = data["pattern"], data["ranks"], data["special_tokens"]
        if not (isinstance(pattern, str) and isinstance(ranks_b64, list)
                and isinstance(specials, dict)):
            raise ValueError("pattern, ranks or special_tokens has the wrong type")
        ranks = [base64.b64decode(s, validate=True) for s in ranks_b64]
        specials = {str(k): int(v) for k, v in specials.items()}
        if len(ranks) < 256 or sorted(specials.values()) != list(
            range(len(ranks), len(ranks) + len(specials))
        ):
            raise ValueError("token ranks and special ids do not line up")
        return cls(pattern, ranks, specials)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return (self.pattern, self.ranks, self.specials) == (
            other.pattern, other.ranks, other.specials
        )

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"

    # --- encoding ---------------------------------------------------------------------------

    @property
    def encoding(self) -> Any:
        """The underlying ``tiktoken.Encoding``."""
        return self._enc

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (embedding rows a model needs)."""
        return self._enc.n_vocab

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` in reading order; special-token spellings stay plain text."""
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 2) -> list[list[int]]:
        """:meth:`encode` for many texts, on ``num_threads`` threads.

        Each thread encodes one contiguous chunk. tiktoken's own batch call submits one
        thread-pool task per text, which costs as much as encoding a short docstring; its
        Rust encoder releases the GIL, so plain chunks keep every core busy.
        """
        texts = list(texts)
        threads = max(1, min(num_threads, len(texts) // 8))
        encode = self._enc.encode_ordinary
        if threads == 1:
            return [encode(t) for t in texts]
        size = -(-len(texts) // threads)
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        parts = _pool(threads).map(lambda chunk: [encode(t) for t in chunk], chunks)
        return [ids for part in parts for ids in part]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens decode to their names."""
        return self._enc.decode(list(ids))

    @property
    def special_ids(self) -> SpecialIds:
        """The special-token ids :mod:`backlm.direction` works with."""
        s = self.specials
        return SpecialIds(
            bos=s["<|bos|>"],
            forward=s["<|forward|>"],
            backward=s["<|backward|>"],
            user_start=s["<|user_start|>"],
            user_end=s["<|user_end|>"],
            assistant_start=s["<|assistant_start|>"],
            assistant_end=s["<|assistant_end|>"],
        )

    @property
    def bos_id(self) -> int:
        """Id of ``<|bos|>``."""
        return self.specials["<|bos|>"]

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes of each id's text (0 for special tokens): the bits-per-byte divisor."""
        if self._byte_lengths is None:
            lengths = [0] * self.vocab_size
            for rank, token in enumerate(self.ranks):
                lengths[rank] = len(token)
            self._byte_lengths = lengths
        return list(self._byte_lengths)

    def id_to_token_str(self, token_id: int) -> str:
        """Printable text of one id (undecodable byte pieces shown as ``\\xNN``)."""
        for name, sid in self.specials.items():
            if sid == token_id:
                return name
        if not 0 <= token_id < len(self.ranks):
            raise IndexError(f"token id {token_id} is outside the vocabulary")
        return self.ranks[token_id].decode("utf-8", errors="backslashreplace")

    # --- conversations ----------------------------------------------------------------------

    def render_conversation(
        self, messages: Sequence[dict[str, Any]]
    ) -> tuple[list[int], list[int], list[int]]:
        """Render chat ``messages`` in reading order, without BOS.

        Returns ``(ids, roles, parts)``: per token its :class:`~backlm.direction.Role` and
        :class:`~backlm.direction.Part` (start tag OPEN, text CONTENT, end tag CLOSE). Masks
        come from :func:`backlm.direction.encode_conversation`. A leading ``system`` message
        is folded into the first user message; turns must alternate user, assistant, ...
        """
        ids: list[int] = []
        roles: list[int] = []
        parts: list[int] = []
        for role_name, content in _normalise_messages(messages):
            turn = self.render_turn(role_name, content)
            role = Role.USER if role_name == "user" else Role.ASSISTANT
            ids += turn
            roles += [int(role)] * len(turn)
            parts += [int(Part.OPEN), *[int(Part.CONTENT)] * (len(turn) - 2), int(Part.CLOSE)]
        return ids, roles, parts

    def render_turn(self, role: str, content: str) -> list[int]:
        """One ``user`` or ``assistant`` turn in reading order: start tag, text, end tag."""
        sid = self.special_ids
        start, end = ((sid.user_start, sid.user_end) if role == "user"
                      else (sid.assistant_start, sid.assistant_end))
        return [start, *self.encode(content), end]


def tokenizer_file(directory: str | Path) -> Path | None:
    """The file holding backlm's tokenizer in ``directory``: ``backlm_tokenizer.json``, else
    ``tokenizer.json`` (the name before the rename; loading it refuses Hugging Face's format
    by name); None if neither is there."""
    for name in (TOKENIZER_FILE, LEGACY_TOKENIZER_FILE):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def check_vocab_size(vocab_size: int) -> None:
    """Raise :class:`UserError` unless ``vocab_size`` leaves room for bytes and specials."""
    if vocab_size < _MIN_VOCAB:
        raise UserError(
            f"vocab size must be at least {_MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} "
            f"special tokens), got {vocab_size}"
        )


def _normalise_messages(messages: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    if not isinstance(messages, Sequence) or not messages:
        raise UserError("a conversation needs at least one message")
    turns: list[tuple[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise UserError(f"message {i} must be an object with 'role' and 'content'")
        if not isinstance(msg["content"], str):
            raise UserError(f"message {i}: 'content' must be a string")
        turns.append((str(msg["role"]), msg["content"]))
    if turns[0][0] == "system":
        if len(turns) < 2 or turns[1][0] != "user":
            raise UserError("a system message must be followed by a user message")
        # Nanochat style: the chat format has no system role, so it prefixes the first turn.
        turns = [("user", f"{turns[0][1]}\n\n{turns[1][1]}"), *turns[2:]]
    for i, (role, _) in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise UserError(
                f"conversation turn {i} has role {role!r}, expected {expected!r}: turns must "
                "alternate user, assistant, user, ... (an optional system message first)"
            )
    return turns
