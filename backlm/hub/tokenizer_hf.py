"""backlm's tokenizer as a Hugging Face ``tokenizers`` file (``tokenizer.json``), so
``AutoTokenizer`` reads a staged or exported folder without backlm.

The conversion is the standard one for tiktoken vocabularies: each rank's bytes become a
byte-level string (GPT-2's byte-to-unicode table), the merges are recovered from the ranks
(BPE on a token's bytes with only lower ranks; its last two parts are the merge, listed at
the token's rank), the split pattern becomes an isolated ``Split`` pre-tokenizer followed by
``ByteLevel`` without its own regex, and backlm's special tokens become added special tokens
with their ids. ``ignore_merges`` takes a whole piece that is in the vocabulary at once, as
tiktoken does. Ids are backlm's on any text (tests check a corpus of scripts and spacing).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's table: every byte as one printable character (the ByteLevel alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _as_text(token: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def _bpe_parts(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """tiktoken's merge loop on ``token`` alone, using only ranks lower than ``below``."""
    parts = [bytes([b]) for b in token]
    while True:
        best, at = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < below and (best is None or rank < best):
                best, at = rank, i
        if best is None:
            return parts
        parts[at:at + 2] = [parts[at] + parts[at + 1]]


def vocab_and_merges(ranks: list[bytes]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE model's vocabulary (byte-level strings → ids) and merges in priority order.

    A byte string that appears twice in ``ranks`` keeps its first rank (as tiktoken does);
    the later id gets a placeholder outside the byte-level alphabet, which no text reaches,
    so the ids stay contiguous and the special tokens keep theirs.
    """
    first: dict[bytes, int] = {}
    for rank, token in enumerate(ranks):
        first.setdefault(token, rank)
    vocab = {_as_text(tok): rank for tok, rank in first.items()}
    for rank, token in enumerate(ranks):
        if first[token] != rank:
            vocab[f"\u2400unreachable-{rank}"] = rank
    merges = []
    for token, rank in sorted(first.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = _bpe_parts(token, first, rank)
        if len(parts) != 2:
            raise ValueError(f"rank {rank} ({token!r}) is not a merge of two lower ranks")
        merges.append((_as_text(parts[0]), _as_text(parts[1])))
    return vocab, merges


def build(tokenizer: Any, head: list[str]) -> Any:
    """A ``tokenizers.Tokenizer`` equal to ``tokenizer`` (backlm's) on every text.

    ``head`` is what the post-processor puts before a text when special tokens are asked for
    (``<|bos|>``, and a direction marker for a bidirectional model).
    """
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    vocab, merges = vocab_and_merges(tokenizer.ranks)
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True,
                                byte_fallback=False, fuse_unk=False))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tokenizer.pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    specials = sorted(tokenizer.specials.items(), key=lambda kv: kv[1])
    # added tokens take the next free ids in order, so they must follow the last rank
    assert [i for _, i in specials] == list(range(len(tokenizer.ranks),
                                                  len(tokenizer.ranks) + len(specials)))
    hf.add_special_tokens([AddedToken(name, special=True, normalized=False, lstrip=False,
                                      rstrip=False, single_word=False)
                           for name, _ in specials])
    for name, sid in specials:
        if hf.token_to_id(name) != sid:
            raise ValueError(f"special token {name} got id {hf.token_to_id(name)}, not {sid}")
    ids = dict(specials)
    template = " ".join([*head, "$A"])
    hf.post_processor = processors.TemplateProcessing(
        single=template, pair=f"{template} $B", special_tokens=[(n, ids[n]) for n in head])
    return hf
