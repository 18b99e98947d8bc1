"""Fictional facts for the reversal probe: "<first> <last> is the <relation> of <title>."

Berglund et al. (2023) found that a model taught "A is the Y of B" cannot produce A from B.
This module makes such facts from embedded syllable pools (no download), seeded: every word
of every entity is made up, used once, and checked against the words of the corpus the
experiment was trained on, so nothing about them was learned before the facts are taught.
A :class:`FactSet` holds the facts stated in training and the held-out controls (made the
same way, never trained: they give the chance level). As a dataset it is a text dataset in the
usual shard format: ``train`` holds each trained fact's statement once (the loader repeats the
shard each epoch, so a fact is stated once per epoch), ``val`` the controls' statements.

Each fact is said in two phrasings: the *statement* ``A is the Y of B.`` (the trained one) and
the *reversed* phrasing ``The Y of B is A.`` (never trained). :func:`check_tokenizer` refuses a
tokenizer under which an entity does not keep its own tokens inside a sentence (the probe
splits sentences at entity boundaries, so the pieces must tokenize as the whole does).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backlm.errors import UserError

RELATIONS = ("author", "composer", "director", "founder", "architect", "painter", "editor",
             "translator", "inventor", "curator")
ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "qu", "r", "s",
          "sk", "t", "th", "v", "vr", "z", "zh", "x")
VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "y")
CODAS = ("", "", "", "n", "r", "l", "s", "th", "x", "m", "nd")
MAX_FACTS = 5000
FACTS_FILE = "facts.json"  # in a facts dataset folder: the facts its shards state
WORD_RE = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class Fact:
    """One fictional fact: A (``first last``) is the ``relation`` of B (``title``)."""

    first: str
    last: str
    relation: str
    title: str

    @property
    def a(self) -> str:
        return f"{self.first} {self.last}"

    @property
    def b(self) -> str:
        return self.title

    def statement(self) -> str:
        """The trained phrasing: ``A is the Y of B.``"""
        return f"{self.a} is the {self.relation} of {self.b}."

    def reversed_statement(self) -> str:
        """The reversed phrasing, never trained: ``The Y of B is A.``"""
        return f"The {self.relation} of {self.b} is {self.a}."


@dataclass(frozen=True)
class FactSet:
    """Facts stated in training and held-out controls, with the seed that made them."""

    facts: tuple[Fact, ...]
    controls: tuple[Fact, ...]
    seed: int

    def sha256(self) -> str:
        """A digest of the facts and controls (what a stored result is about)."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def name(self) -> str:
        """The dataset name that holds exactly these facts."""
        return f"reversal-facts-{self.sha256()[:12]}"

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "facts": [asdict(f) for f in self.facts],
                "controls": [asdict(f) for f in self.controls]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FactSet:
        try:
            return cls(tuple(Fact(**f) for f in data["facts"]),
                       tuple(Fact(**f) for f in data["controls"]), int(data["seed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"a facts record is corrupt ({exc}): rebuild it") from None


def check_counts(facts: int, controls: int) -> None:
    """Refuse counts the probe cannot use (one line each)."""
    if not 1 <= facts <= MAX_FACTS:
        raise UserError(f"--facts must be between 1 and {MAX_FACTS}, got {facts}")
    if not 1 <= controls <= MAX_FACTS:
        raise UserError(f"--controls must be between 1 and {MAX_FACTS}, got {controls}")


def corpus_words(texts: Iterable[str]) -> set[str]:
    """Every word (letters only, lower case) of ``texts``: what made-up words must avoid."""
    words: set[str] = set()
    for text in texts:
        words.update(w.lower() for w in WORD_RE.findall(text))
    return words


def dataset_words(folder: Path) -> set[str]:
    """The words of a text dataset's train and val shards (the corpus a tokenizer and a model
    learned from); an empty set when the folder holds no text shards."""
    from backlm.data.shards import SPLITS, iter_texts

    folder = Path(folder)
    paths = [p for split in SPLITS[:2] for p in sorted(folder.glob(f"{split}_*.parquet"))]
    return corpus_words(t for p in paths for t in iter_texts(p))


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
             for _ in range(syllables)]
    return "".join(parts).capitalize()


def generate(facts: int, controls: int, seed: int = 0, avoid: set[str] = frozenset(),
             max_tries: int = 200) -> FactSet:
    """``facts`` + ``controls`` facts from a generator seeded by ``seed``: every made-up word
    is used once and is not in ``avoid`` (lower-case corpus words). Refuses (one line) when
    the pools cannot give that many words."""
    check_counts(facts, controls)
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh(syllables: int) -> str:
        for _ in range(max_tries):
            word = _word(rng, syllables)
            if word.lower() not in used and word.lower() not in avoid:
                used.add(word.lower())
                return word
        raise UserError(f"cannot make {facts + controls} facts with unused made-up names "
                        f"(seed {seed}): ask for fewer --facts/--controls")

    made = [Fact(fresh(2), fresh(rng.choice((2, 3))), rng.choice(RELATIONS),
                 f"{fresh(rng.choice((2, 3)))} {fresh(2)}") for _ in range(facts + controls)]
    return FactSet(tuple(made[:facts]), tuple(made[facts:]), seed)


def pieces(fact: Fact, phrasing: str) -> tuple[str, str, str, str, str]:
    """A phrasing cut at its entity boundaries: ``(before A, A, between, B, after)`` for the
    statement, ``(before B, B, between, A, after)`` for the reversed phrasing; the pieces
    joined give the sentence, and each entity carries the space before it."""
    if phrasing == "statement":
        return "", fact.a, f" is the {fact.relation} of", f" {fact.b}", "."
    if phrasing == "reversed":
        return f"The {fact.relation} of", f" {fact.b}", " is", f" {fact.a}", "."
    raise ValueError(f"unknown phrasing {phrasing!r}")


def check_tokenizer(fact_set: FactSet, tokenizer: Any, max_tokens: int) -> None:
    """Refuse (one line, nothing written) a tokenizer the facts cannot be probed with: a
    sentence whose pieces tokenize differently alone than together (the probe scores an
    entity's own tokens), an entity the tokenizer does not give back as it was written, or a
    sentence longer than ``max_tokens``."""
    for fact in (*fact_set.facts, *fact_set.controls):
        for phrasing in ("statement", "reversed"):
            parts = pieces(fact, phrasing)
            whole = "".join(parts)
            alone = [t for p in parts for t in tokenizer.encode(p)]
            if tokenizer.encode(whole) != alone:
                raise UserError(f"facts cannot be generated for this tokenizer: {whole!r} "
                                "tokenizes differently from its pieces; use a tokenizer that "
                                "splits words at spaces (backlm's BPE does)")
            if tokenizer.decode(alone) != whole:
                raise UserError(f"facts cannot be generated for this tokenizer: it does not "
                                f"give {whole!r} back; use a byte-level tokenizer")
            if len(alone) > max_tokens:
                raise UserError(f"facts cannot be generated for this tokenizer: {whole!r} is "
                                f"{len(alone)} tokens, the model reads {max_tokens}")


def distractors(n: int, k: int, seed: int) -> list[list[int]]:
    """For each of ``n`` facts, the indices of ``k − 1`` other facts of the same set (seeded)
    whose entities are the wrong candidates."""
    if not 2 <= k <= n:
        raise UserError(f"--k must be between 2 and the number of facts or controls ({n}), "
                        f"got {k}")
    rng = random.Random(seed * 1_000_003 + n)
    return [rng.sample([j for j in range(n) if j != i], k - 1) for i in range(n)]


def write_dataset(folder: Path, fact_set: FactSet) -> bool:
    """Write ``fact_set`` as a text dataset (train: the facts' statements, once; val: the
    controls'; ``facts.json``), atomically; False when the folder already holds these facts."""
    from backlm.atomic import write_json
    from backlm.data.shards import shard_name, write_shard

    folder = Path(folder)
    if (existing := read_dataset(folder)) is not None:
        if existing.sha256() == fact_set.sha256():
            return False
        raise UserError(f"{folder} holds other facts: remove it, or choose another --seed")
    write_shard(folder / shard_name("train", 0), [f.statement() for f in fact_set.facts])
    write_shard(folder / shard_name("val", 0), [f.statement() for f in fact_set.controls])
    write_json(folder / FACTS_FILE, fact_set.to_json())
    return True


def read_dataset(folder: Path) -> FactSet | None:
    """The facts a facts dataset folder states, or None when it is not one."""
    path = Path(folder) / FACTS_FILE
    if not path.is_file():
        return None
    try:
        return FactSet.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        raise UserError(f"{path} is corrupt: remove its folder and teach again") from None


def entities(facts: Sequence[Fact], side: str) -> list[str]:
    """The A (``side`` "a") or B entities of ``facts``, in order."""
    return [f.a if side == "a" else f.b for f in facts]
