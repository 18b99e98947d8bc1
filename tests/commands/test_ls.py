"""``backlm ls``: a table of experiments, or a line saying there are none."""

from __future__ import annotations

import json

from tests.helpers import run_cli


def test_empty_folder_says_so(tmp_path):
    res = run_cli(["ls", "--experiments-dir", str(tmp_path / "none")])
    assert res.exit_code == 0 and "no experiments in" in res.output


def test_rows_show_status_step_and_bpb(tmp_path):
    for exp_id, meta in (("a-run", {"status": "finished", "results": {"val_bpb": 1.25}}),
                         ("broken", None)):
        folder = tmp_path / exp_id
        (folder / "checkpoints" / "step_000004").mkdir(parents=True)
        for name in ("meta.json", "model.safetensors"):
            (folder / "checkpoints" / "step_000004" / name).write_text("{}")
        text = "{" if meta is None else json.dumps({"id": exp_id, "phase": "base",
                                                    "direction": "backward", "depth": 4, **meta})
        (folder / "metadata.json").write_text(text)
    res = run_cli(["ls", "--experiments-dir", str(tmp_path)])
    assert res.exit_code == 0
    line = next(x for x in res.output.splitlines() if "a-run" in x)
    assert "backward" in line and "1.2500" in line and "finished" in line and " 4 " in line
    assert "corrupt" in next(x for x in res.output.splitlines() if "broken" in x)
