"""A dataset's tokenizer: ``<dataset>/tokenizer/``, trained on the dataset's own train shards
the first time it is needed and copied into every experiment that trains on the dataset."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from backlm.data.shards import iter_texts, list_shards
from backlm.tokenizer import (
    DEFAULT_TRAIN_CHARS,
    DEFAULT_VOCAB_SIZE,
    Tokenizer,
    tokenizer_file,
)


def tokenizer_dir(dataset_dir: str | Path) -> Path:
    """Where a dataset keeps its tokenizer."""
    return Path(dataset_dir) / "tokenizer"


def existing_tokenizer(dataset_dir: str | Path) -> Tokenizer | None:
    """The dataset's tokenizer if it was trained already, else None (nothing is trained)."""
    directory = tokenizer_dir(dataset_dir)
    return Tokenizer.load(directory) if tokenizer_file(directory) is not None else None


def take_chars(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Yield ``texts`` until about ``max_chars`` characters have gone by."""
    total = 0
    for text in texts:
        if total >= max_chars:
            return
        total += len(text)
        yield text


def dataset_tokenizer(
    dataset_dir: str | Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    max_chars: int = DEFAULT_TRAIN_CHARS,
) -> Tokenizer:
    """The tokenizer of a dataset: loaded from ``<dataset>/tokenizer/`` or trained and saved.

    Training reads the train shards in order, up to ``max_chars`` characters.
    """
    tokenizer = existing_tokenizer(dataset_dir)
    if tokenizer is not None:
        return tokenizer
    shards = list_shards(dataset_dir, "train")
    texts = (text for shard in shards for text in iter_texts(shard))
    tokenizer = Tokenizer.train(take_chars(texts, max_chars), vocab_size)
    tokenizer.save(tokenizer_dir(dataset_dir))
    return tokenizer
