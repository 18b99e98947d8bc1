"""The Python API: ``backlm.load`` a model from an experiment or a hub folder; it generates,
chats and scores reading-order text in its direction."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import backlm
from backlm.direction import Direction
from backlm.errors import UserError
from backlm.evaluation import score_text
from backlm.experiment import load_model
from backlm.serve import Chat, Sampling


def test_importing_backlm_loads_no_torch():
    code = "import sys, backlm; assert callable(backlm.load); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_loaded_experiment_says_what_it_is(served):
    model = backlm.load("b0", experiments=served)
    assert isinstance(model, backlm.Model)
    assert model.direction is Direction.BACKWARD and model.name == "b0" and model.phase == "base"
    assert model.step == load_model("b0", served).step


def test_generate_is_the_chat_engines_continuation_in_reading_order(served):
    model = backlm.load("b0", experiments=served)
    text = "the end of a text."
    written = model.generate(text, max_new_tokens=12)
    assert written  # a backward model writes what came before ...
    reference = Chat(model.module, model.tokenizer, Direction.BACKWARD, "base")
    list(reference.send(text, Sampling(temperature=0, max_tokens=12)))
    assert reference.text == written + text  # ... exactly as the chat engine places it


def test_sampling_is_seeded_and_checked(served):
    model = backlm.load("b0", experiments=served)
    a = model.generate("x", max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    assert a == model.generate("x", max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    with pytest.raises(UserError, match="top-p"):
        model.generate("x", temperature=1.0, top_p=1.5)


def test_score_is_the_probes(served):
    model = backlm.load("b0", experiments=served)
    loaded = load_model("b0", served)
    mine, probe = model.score("some text"), score_text(loaded.model, loaded.tokenizer,
                                                       loaded.direction, "some text")
    assert mine.keys() == probe.keys() == {"backward"}  # the one order it knows
    assert mine["backward"]["logprob"] == pytest.approx(probe["backward"]["logprob"])


def test_chat_takes_an_order_only_a_bidirectional_model_knows(served):
    bi = backlm.load("bi1", experiments=served)
    assert bi.chat("backward").order is Direction.BACKWARD
    assert bi.chat().order is Direction.FORWARD
    with pytest.raises(UserError, match="only a bidirectional model"):
        backlm.load("s1", experiments=served).chat("forward")


def test_a_hub_folder_loads_the_same_model(lineage):
    from backlm.hub import UploadRequest, upload

    result = upload(UploadRequest("b0", "me/b0", lineage, dry_run=True))
    from_hub = backlm.load(result.folder)
    from_exp = backlm.load("b0", experiments=lineage, step=from_hub.step)
    assert from_hub.direction is Direction.BACKWARD and from_hub.name == "b0"
    assert from_hub.generate("end.", max_new_tokens=10) == from_exp.generate(
        "end.", max_new_tokens=10)


def test_a_hub_folder_without_backlms_header_is_refused(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="no backlm header") as err:
        backlm.load(tmp_path)
    assert "\n" not in str(err.value)


def test_a_hub_folder_with_another_tokenizer_is_refused(lineage):
    from backlm.hub import UploadRequest, upload

    folder = upload(UploadRequest("b0", "me/b0", lineage, dry_run=True)).folder
    path = folder / "backlm_tokenizer.json"
    data = json.loads(path.read_text())
    ranks = data["ranks"]
    ranks[0], ranks[1] = ranks[1], ranks[0]  # a different tokenizer of the same size
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="not the tokenizer"):
        backlm.load(folder)


def test_a_hub_folder_staged_before_the_tokenizer_rename_still_loads(lineage):
    """Folders staged before: backlm's tokenizer in tokenizer/tokenizer.json, no HF files."""
    from backlm.hub import UploadRequest, upload

    folder = upload(UploadRequest("b0", "me/b0", lineage, dry_run=True)).folder
    (folder / "tokenizer").mkdir()
    (folder / "backlm_tokenizer.json").rename(folder / "tokenizer" / "tokenizer.json")
    (folder / "tokenizer.json").unlink()
    model = backlm.load(folder)
    assert model.generate("the end.", max_new_tokens=4) == backlm.load(
        lineage / "b0").generate("the end.", max_new_tokens=4)


@pytest.mark.parametrize("break_it", ["no tokenizer", "weights a folder"])
def test_a_hub_folder_missing_a_part_is_refused_naming_it(lineage, break_it):

    from backlm.hub import UploadRequest, upload

    folder = upload(UploadRequest("b0", "me/b0", lineage, dry_run=True)).folder
    if break_it == "no tokenizer":
        (folder / "backlm_tokenizer.json").unlink()
        needle = "backlm_tokenizer.json is not a file"
    else:
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors").mkdir()
        needle = "model.safetensors is not a file"
    with pytest.raises(UserError, match=needle) as err:
        backlm.load(folder)
    assert "\n" not in str(err.value)
