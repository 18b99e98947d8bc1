"""A dataset's tokenizer: trained once from its train shards, then loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from backlm.data.vocab import dataset_tokenizer, existing_tokenizer, take_chars, tokenizer_dir
from backlm.errors import UserError
from backlm.tokenizer import TOKENIZER_FILE


def test_take_chars_caps_text() -> None:
    assert list(take_chars(["aaa", "bbb", "ccc"], 4)) == ["aaa", "bbb"]
    assert list(take_chars(["aaa"], 0)) == []


def test_dataset_tokenizer_trains_once_then_loads(tiny_dataset: Path) -> None:
    first = dataset_tokenizer(tiny_dataset, vocab_size=300)
    path = tiny_dataset / "tokenizer" / TOKENIZER_FILE
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    again = dataset_tokenizer(tiny_dataset, vocab_size=300)
    assert again == first and path.stat().st_mtime_ns == stamp


def test_dataset_tokenizer_without_shards_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="backlm data prepare"):
        dataset_tokenizer(tmp_path / "empty")


def test_existing_tokenizer_never_trains(tiny_dataset: Path) -> None:
    assert existing_tokenizer(tiny_dataset) is None
    assert not tokenizer_dir(tiny_dataset).exists()
    trained = dataset_tokenizer(tiny_dataset, vocab_size=300)
    assert existing_tokenizer(tiny_dataset) == trained
