"""Language-model evaluation: which splits it reads."""

from __future__ import annotations


def test_missing_ood_split_is_a_note(tmp_path):
    from backlm.data.shards import write_shard
    from backlm.evaluation.lm import lm_shards

    write_shard(tmp_path / "val_00000.parquet", ["some text"])
    shards, notes = lm_shards(tmp_path)
    assert list(shards) == ["val"] and "OOD language modelling skipped" in notes[0]
