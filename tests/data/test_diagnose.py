"""``backlm data diagnose``: passes on correct batches, catches an order bug."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from backlm.cli import app
from tests.conftest import make_docs


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    from backlm.data.shards import write_shard
    from backlm.tokenizer import Tokenizer

    monkeypatch.setenv("BACKLM_HOME", str(tmp_path))
    d = tmp_path / "data" / "pydocs"
    docs = make_docs(300)
    write_shard(d / "train_00000.parquet", docs[:250], row_group_docs=50)
    write_shard(d / "val_00000.parquet", docs[250:], row_group_docs=25)
    Tokenizer.train(docs, vocab_size=300).save(d / "tokenizer")
    return d


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_diagnose_passes(prepared, direction):
    res = CliRunner().invoke(app, ["data", "diagnose", "-d", direction, "--seq-len", "64"])
    assert res.exit_code == 0, res.output
    assert "diagnose passed" in res.output and "reading order" in res.output
    assert "piece is its reading-order span" in res.output and "FAIL" not in res.output
    assert "same spans in every direction" in res.output
    if direction == "bidirectional":
        assert "direction marker after BOS" in res.output


def test_diagnose_catches_a_missing_reversal(prepared, monkeypatch):
    import backlm.data.loader as loader
    from backlm import direction as d

    def buggy(tokens, direction, ids, order=None):  # forgets to reverse backward documents
        return d.encode_document_array(tokens, "forward", ids)

    monkeypatch.setattr(loader, "encode_document_array", buggy)
    res = CliRunner().invoke(app, ["data", "diagnose", "-d", "backward", "--seq-len", "64"])
    assert res.exit_code == 1 and "FAILED" in res.output


def test_diagnose_catches_direction_dependent_crops(prepared, monkeypatch):
    """The old rule: crop the last piece in the model's order. Backward then keeps other
    reading-order spans than forward, which the span comparison must catch."""
    import backlm.data.loader as loader

    real = loader.PackedLoader._take

    def model_order_crop(self, space):
        piece = real(self, space)
        if piece is not None and self.direction.value == "backward" and len(piece.body) > 3:
            return loader._Piece(piece.key, piece.start + 1, piece.body[1:], piece.order)
        return piece

    monkeypatch.setattr(loader.PackedLoader, "_take", model_order_crop)
    res = CliRunner().invoke(app, ["data", "diagnose", "-d", "forward", "--seq-len", "64",
                                   "--ngram-chars", "0"])
    assert res.exit_code == 1, res.output
    line = next(ln for ln in res.output.splitlines() if "same spans" in ln)
    assert "FAIL" in line
