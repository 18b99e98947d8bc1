"""``backlm export EXP --format hf OUT``: the folder written and named; OUT that exists or a
format backlm does not write is one line, exit 2, nothing written."""

from __future__ import annotations

import json

from tests.helpers import assert_user_error, run_cli, tree_snapshot


def test_export_writes_a_transformers_folder(lineage, tmp_path):
    out = tmp_path / "b0-hf"
    res = run_cli(["export", "b0", "--format", "hf", str(out), "--step", "1"])
    assert res.exit_code == 0, res.output
    assert "exported b0 step 1 (backward, base)" in res.output
    config = json.loads((out / "config.json").read_text())
    assert config["backlm_direction"] == "backward" and config["backlm_step"] == 1
    assert {"modeling_backlm.py", "configuration_backlm.py", "tokenizer.json",
            "tokenizer_config.json", "generation_config.json", "backlm_tokenizer.json",
            "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())

    before = tree_snapshot(tmp_path)
    assert_user_error(run_cli(["export", "b0", "--format", "hf", str(out)]), "already exists")
    assert_user_error(run_cli(["export", "b0", "--format", "onnx", str(tmp_path / "x")]),
                      "not an export format")
    assert tree_snapshot(tmp_path) == before
