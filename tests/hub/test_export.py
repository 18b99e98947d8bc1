"""backlm.hub.export: a real experiment's checkpoint as a transformers folder on disk, loaded by
``AutoModelForCausalLM`` (no backlm in the model code) with backlm's logits, and by backlm."""

from __future__ import annotations

import json

import pytest

from backlm.errors import UserError
from backlm.experiment.folder import Experiment
from backlm.hub.export import ExportRequest, export
from tests.helpers import tree_snapshot

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_an_export_loads_in_transformers_with_backlms_logits(lineage, tmp_path):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import backlm
    from backlm.experiment.loading import load_model
    from tests.hub.test_upload import write_results

    write_results(Experiment(lineage / "s1"), 2)  # the card lists them under the experiment
    result = export(ExportRequest("s1", tmp_path / "out" / "s1", lineage, step="latest"))
    folder = result.folder
    assert folder == tmp_path / "out" / "s1" and result.spec.step == 2
    assert not list((tmp_path / "out").glob(".*")), "no temporary folder is left"
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "pt"
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config).__name__ == "BacklmConfig" and config.backlm_direction == "backward"
    assert config.hidden_size == config.model_dim == 64 and config.num_hidden_layers == 2
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(folder)  # no trust needed for the tokenizer itself
    ours = load_model(lineage / "s1", step=2, device="cpu")
    text = "doc7: alpha beta gamma."
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids == ours.tokenizer.encode(text)
    x = torch.tensor([[ours.tokenizer.bos_id, *ids[::-1]]])  # backward: the ids reversed
    with torch.no_grad():
        assert torch.allclose(model(x).logits, ours.model(x), atol=1e-4, rtol=0)
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["export"]["step"] == 2 and "upload" not in meta
    card = (folder / "README.md").read_text()
    assert f'from_pretrained("{folder}"' in card and "snapshot_download" not in card
    assert "- name: s1" in card and (folder / "evaluations/sft/backward/lm.json").is_file()
    assert backlm.load(folder).loaded.step == 2  # backlm reads the same folder


@pytest.mark.parametrize(("change", "words"), [
    ({"format": "gguf"}, "not an export format"),
    ({"experiment": "nope"}, "no experiment 'nope'"),
    ({"step": "9"}, "no checkpoint at step 9"),
    ({"out": "exists"}, "already exists"),
])
def test_bad_exports_write_nothing(lineage, tmp_path, change, words):
    (tmp_path / "exists").mkdir()
    before = tree_snapshot(tmp_path)
    fields = {"experiment": "b0", "out": tmp_path / "new", "root": lineage, **change}
    if change.get("out") == "exists":
        fields["out"] = tmp_path / "exists"
    with pytest.raises(UserError, match=words):
        export(ExportRequest(**fields))
    assert tree_snapshot(tmp_path) == before
