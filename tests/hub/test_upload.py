"""backlm.hub.upload, backlm.hub.staging, backlm.hub.client and backlm.hub.card: the staged hub
folder (weights whose header says how to use them, config, tokenizer, metadata, evaluations,
card), pushes to a fake hub on 127.0.0.1, and the checks that come before both."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from backlm.errors import UserError
from backlm.experiment.folder import Experiment
from backlm.hub.upload import UploadRequest, check_repo_id, choose_step, upload
from tests.fake_hub import running_hub
from tests.helpers import tree_snapshot

TOKEN = "hf_test_token_9f3c"


def header(data: bytes) -> dict:
    """The JSON header of safetensors bytes (8-byte little-endian length, then JSON)."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])


def no_hub_client(monkeypatch):
    """Make any construction of a hub client fail the test."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not build a hub client")

    monkeypatch.setattr(huggingface_hub, "HfApi", refuse)


def write_results(exp: Experiment, step: int) -> None:
    """An lm evaluation of ``step``, an ARC one of another step, and 5CAT of ``step``."""
    from backlm.atomic import write_json

    phase = exp.phase
    write_json(exp.evaluation_path(phase, "backward", "lm"), {
        "experiment": exp.id, "task": "lm", "direction": "backward", "native": True,
        "phase": phase, "step": step, "summary": {"metric": "val_loss", "val_loss": 2.5,
                                                  "val_bpb": 1.25, "val_tokens": 100},
        "records": [{"split": "val", "secret_per_example": 1}]})
    write_json(exp.evaluation_path(phase, "forward", "arc-easy"), {
        "task": "arc-easy", "direction": "forward", "step": step + 100,
        "summary": {"metric": "acc", "score": 0.3, "acc": 0.3}, "records": []})
    write_json(exp.fivecat_path(phase, step), {
        "experiment": exp.id, "step": step, "phase": phase, "direction": "backward",
        "passed": False, "gates_passed": 3, "gates_total": 5, "score": 0.42, "inverted": False,
        "gates": {"A": {"name": "offset sweep", "passed": True}}, "spec": "/abs/path.yaml"})


# --- checks --------------------------------------------------------------------------------


@pytest.mark.parametrize("repo", ["user/name", "my-org/model.v2", "a_b/c-d_e.f", "U1/X_"])
def test_hub_model_ids_are_accepted(repo):
    assert check_repo_id(f" {repo} ") == repo


@pytest.mark.parametrize(("repo", "words"), [
    ("name", "no namespace"), ("", "no namespace"), ("a/b/c", "not a hub model id"),
    ("user/na--me", "not a hub model id"), ("user/a..b", "not a hub model id"),
    ("-user/name", "not a hub model id"), ("user/name.git", "not a hub model id"),
    ("user/" + "n" * 97, "not a hub model id"), ("us er/name", "not a hub model id"),
    ("user/modèle", "not a hub model id"), ("user/", "not a hub model id"),
])
def test_bad_repo_ids_are_refused(repo, words):
    with pytest.raises(UserError, match=words):
        check_repo_id(repo)


def test_the_step_is_best_best_5cat_latest_or_a_number(lineage):
    b0 = Experiment(lineage / "b0")  # checkpoints 1 and 4, best 4
    assert choose_step(b0, None)[1] == 4 and choose_step(b0, "best")[1] == 4
    assert choose_step(b0, "latest")[1] == 4 and choose_step(b0, "1")[1] == 1
    for step, words in (("best_5cat", "no best_5cat.json"), ("7", "no checkpoint at step 7"),
                        ("x", "not a step"), ("²", "not a step")):
        with pytest.raises(UserError, match=words):
            choose_step(b0, step)
    b0.write_best("5cat", {"step": 1, "score": 0.5})
    assert choose_step(b0, "best_5cat") == (b0.checkpoint_dir(1), 1)
    b0.write_best("5cat", {"step": 3})
    with pytest.raises(UserError, match="not on disk"):
        choose_step(b0, "best_5cat")


@pytest.mark.parametrize(("change", "words"), [
    ({"repo_id": "nameonly"}, "no namespace"),
    ({"experiment": "nope"}, "no experiment 'nope'"),
    ({"step": "9"}, "no checkpoint at step 9"),
    ({"token": None}, "set HF_TOKEN"),
    ({"license": "MIT License"}, "not a license id"),
    ({"endpoint": "ftp://hub"}, "not an http"),
])
def test_bad_requests_write_nothing_and_contact_nothing(lineage, monkeypatch, change, words):
    no_hub_client(monkeypatch)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    before = tree_snapshot(lineage)
    fields = dict(experiment="s1", repo_id="me/s1", root=lineage, token=TOKEN,
                  endpoint="http://127.0.0.1:9")
    with pytest.raises(UserError, match=words):
        upload(UploadRequest(**{**fields, **change}))
    assert tree_snapshot(lineage) == before


# --- the staged folder -----------------------------------------------------------------------


def test_a_dry_run_stages_a_folder_that_says_how_to_use_the_model(lineage, monkeypatch):
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard_data import model_index_to_eval_results
    from safetensors import safe_open
    from safetensors.torch import load_file

    from backlm.tokenizer import Tokenizer

    s1 = Experiment(lineage / "s1")
    write_results(s1, 2)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    no_hub_client(monkeypatch)
    events = []
    result = upload(UploadRequest("s1", "me/s1-chat", lineage, dry_run=True,
                                  endpoint="http://127.0.0.1:9"),
                    on_event=lambda event, r: events.append(event))
    folder = result.folder
    assert events == ["staged"] and folder == s1.hub_staging_dir("me/s1-chat")
    assert folder == lineage / "s1" / "hub_upload" / "me--s1-chat"
    names = {name for name, _ in result.staged.files}
    assert names == {"README.md", "config.json", "metadata.json", "model.safetensors",
                     "backlm_tokenizer.json", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "generation_config.json",
                     "configuration_backlm.py", "modeling_backlm.py",
                     "evaluations/sft/backward/lm.json", "evaluations/sft/fivecat/step_000002.json"}
    assert result.staged.skipped == ["evaluations/sft/forward/arc-easy.json (step 102)"]
    assert not list(s1.hub_dir.glob(".*")), "no temporary folder is left"
    assert not s1.hub_uploads_path.exists(), "a dry run records no push"

    # the weights: the checkpoint's tensors, with a header that says how to use them
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    ckpt_meta = json.loads((s1.checkpoint_dir(2) / "meta.json").read_text())
    assert meta["direction"] == "backward" and meta["phase"] == "sft" and meta["step"] == "2"
    assert json.loads(meta["model_config"]) == ckpt_meta["model_config"]
    assert meta["tokenizer_sha256"] == ckpt_meta["tokenizer"]["sha256"]
    assert meta["backlm_version"] and "reverse" in meta["usage"]
    assert json.loads(meta["special_tokens"])["<|bos|>"] == 293
    staged, original = load_file(folder / "model.safetensors"), load_file(
        s1.checkpoint_dir(2) / "model.safetensors")
    assert staged.keys() == original.keys()
    assert all((staged[k] == original[k]).all() for k in staged)

    assert meta["format"] == "pt"  # what transformers requires of the file

    # config.json: transformers' (remote code, the real shape) and backlm's order
    config = json.loads((folder / "config.json").read_text())
    assert config["backlm_direction"] == "backward" and config["depth"] == 2
    assert config["architectures"] == ["BacklmForCausalLM"] and config["model_type"] == "backlm"
    assert config["auto_map"] == {"AutoConfig": "configuration_backlm.BacklmConfig",
                                  "AutoModelForCausalLM": "modeling_backlm.BacklmForCausalLM"}
    model_config = ckpt_meta["model_config"]
    assert config["model_dim"] == (model_config["width"] or 64 * model_config["depth"]) > 0
    assert config["n_heads"] * config["head_dim"] == config["model_dim"]
    assert "width" not in config and config["special_tokens"]["<|backward|>"] == 295
    assert (config["bos_token_id"], config["eos_token_id"]) == (293, 296)  # <|user_start|>
    assert Tokenizer.load(folder) == Tokenizer.load(s1.tokenizer_dir)
    hf_tok = json.loads((folder / "tokenizer.json").read_text())
    assert hf_tok["model"]["type"] == "BPE"  # a real tokenizers file, not backlm's
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["direction"] == "backward" and metadata["lineage"]["parent_id"] == "b0"
    assert not {"host", "platform", "data_dir", "command", "pid"} & metadata.keys()
    assert str(lineage) not in (folder / "metadata.json").read_text()
    lm = json.loads((folder / "evaluations/sft/backward/lm.json").read_text())
    assert lm["summary"]["val_bpb"] == 1.25 and "records" not in lm
    fivecat = json.loads((folder / "evaluations/sft/fivecat/step_000002.json").read_text())
    assert fivecat["gates_passed"] == 3 and "spec" not in fivecat

    # the card: valid front matter, the direction first
    card = ModelCard.load(folder / "README.md")
    assert card.content == result.staged.card
    data = card.data
    assert data.license == "mit" and data.library_name == "backlm"
    assert {"backlm", "backward-lm", "direction:backward", "phase:sft"} <= set(data.tags)
    assert data.base_model is None, "a local parent is no hub model id"
    assert data.model_name == "me/s1-chat"
    ModelCardData(**data.to_dict())  # the front matter round-trips through the hub's schema
    _, results = model_index_to_eval_results(data.to_dict()["model-index"])
    metrics = {(r.metric_type, r.metric_value) for r in results}
    assert {("val_bpb", 1.25), ("val_loss", 2.5), ("5cat_gates_passed", 3),
            ("5cat_score", 0.42)} == metrics
    lead = card.text.split("\n\n")[1]
    assert lead.startswith("**A backward language model") and "END of a text" in lead
    assert "`b0` → `s1`" in card.text and "not uploaded" in card.text
    assert "pip install backlm" not in card.text and "not on PyPI" in card.text
    assert "trust_remote_code=True" in card.text and "ids[::-1]" in card.text
    assert "| width | 64 |" in card.text


def test_the_cards_snippets_run_on_the_staged_folder(lineage, monkeypatch):
    """Both: backlm's, and the transformers one that reverses ids itself (no backlm)."""
    import huggingface_hub

    result = upload(UploadRequest("b0", "me/b0", lineage, dry_run=True))
    hf_code, backlm_code = re.findall(r"```python\n(.*?)```", result.staged.card, re.S)
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kw: asked.append(repo) or str(result.folder))
    printed = []
    exec(backlm_code, {"print": printed.append})  # the card's own example
    assert asked == ["me/b0"] and printed[0].endswith("the end of a text.")
    assert len(printed[0]) > len("the end of a text."), "the model wrote what came before"
    assert "import backlm" not in hf_code
    hf_code = hf_code.replace('"me/b0"', repr(str(result.folder)))
    exec(hf_code, {"print": printed.append})
    assert printed[1].endswith("the end of a text.") and printed[1] != "the end of a text."
    import backlm

    # greedy both ways: the same text before the end
    assert printed[1] == backlm.load(result.folder).generate(
        "the end of a text.", order="backward", max_new_tokens=32) + "the end of a text."


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_every_card_states_its_direction_first(direction):
    from huggingface_hub import ModelCard

    from backlm.hub.card import CardInfo, render

    info = CardInfo(repo_id="me/m", experiment="e", direction=direction, phase="base", step=3,
                    model_config={"depth": 2, "width": 64, "heads": 2}, parameters=10,
                    special_tokens={"<|bos|>": 0}, tokenizer_sha256="t", weights_sha256="w",
                    version="0", license="apache-2.0", base_model="me/parent")
    card = ModelCard(render(info))
    lead = card.text.split("\n\n")[1]
    assert lead.startswith(f"**A {direction} language model")
    if direction == "bidirectional":
        assert "<|forward|>" in lead and "<|backward|>" in lead and "marker" in lead
    assert card.data.license == "apache-2.0" and card.data.base_model == "me/parent"
    assert card.data.eval_results is None and f"{direction}-lm" in card.data.tags
    hf_code, code = re.findall(r"```python\n(.*?)```", card.text, re.S)
    compile(code, "snippet", "exec")
    compile(hf_code, "transformers snippet", "exec")
    assert ('"forward"' in code) is (direction != "backward")
    assert ('"backward"' in code) is (direction != "forward")
    # the transformers snippet reverses ids for every order but forward
    assert ("[::-1]" in hf_code) is (direction != "forward")
    assert "trust_remote_code=True" in hf_code and "backlm" not in hf_code.replace(
        "me/m", "")


# --- pushing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("xet", [True, False], ids=["installed-client", "lfs-client"])
def test_a_push_delivers_the_staged_folder(lineage, monkeypatch, xet):
    """With hf_xet (as installed) the client commits every file inline here; without it,
    the weights go through the git-LFS batch endpoint and the card is validated first."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", not xet)
    with running_hub(TOKEN, lfs=not xet) as hub:
        parent = upload(UploadRequest("b0", "me/b0", lineage, token=TOKEN, endpoint=hub.url,
                                      private=True))
        child = upload(UploadRequest("s1", "me/s1", lineage, token=TOKEN, endpoint=hub.url))
        kinds = [k for _, _, k in hub.requests]
        arrived = hub.files("me/s1")
        assert hub.repos["me/b0"]["private"] and not hub.repos["me/s1"]["private"]
        assert set(arrived) == {name for name, _ in child.staged.files}
        for name, data in arrived.items():
            assert data == (child.folder / name).read_bytes(), name
        meta = header(arrived["model.safetensors"])["__metadata__"]
        assert meta["direction"] == "backward" and meta["step"] == "2"
        assert json.loads(meta["model_config"])["depth"] == 2
        card = arrived["README.md"].decode()
        assert "base_model: me/b0" in card, "the parent was pushed to this hub first"
        assert all(h.get("authorization") == f"Bearer {TOKEN}"
                   for h, (_, _, k) in zip(hub.headers, hub.requests, strict=True)
                   if k != "lfs")
    assert ("batch" in kinds and "lfs" in kinds) is (not xet)
    assert kinds.count("commit") == 2 and "unknown" not in kinds
    assert parent.url == f"{hub.url}/me/b0" and child.commit
    pushes = Experiment(lineage / "s1").hub_uploads()
    assert [(p["repo_id"], p["step"], p["endpoint"]) for p in pushes] == [
        ("me/s1", 2, hub.url)]
    assert pushes[0]["commit"] == hub.repos["me/s1"]["commits"][0]["oid"]


@pytest.mark.parametrize(("kind", "status", "words"), [
    ("create", 401, "refused the token (401"),
    ("preupload", 403, "does not let this token write to me/s1 (403"),
    ("commit", 404, "404 Not Found"),
    ("create", 400, "answered 400"),
])
def test_hub_errors_are_one_line_and_leave_the_experiment_alone(lineage, kind, status,
                                                                words):
    with running_hub(TOKEN) as hub:
        hub.fail[kind] = status
        before = tree_snapshot(lineage)
        with pytest.raises(UserError) as err:
            upload(UploadRequest("s1", "me/s1", lineage, token=TOKEN, endpoint=hub.url))
    message = str(err.value)
    assert words in message and "\n" not in message and TOKEN not in message
    assert tree_snapshot(lineage) == before


def test_an_unreachable_hub_is_one_line(lineage):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = tree_snapshot(lineage)
    with pytest.raises(UserError, match="could not push me/s1 to the hub at http://127"):
        upload(UploadRequest("s1", "me/s1", lineage, token=TOKEN,
                             endpoint=f"http://127.0.0.1:{port}"))
    assert tree_snapshot(lineage) == before


def test_a_hub_error_never_shows_the_token():
    from backlm.hub.client import hub_error

    line = hub_error(RuntimeError(f"echoed {TOKEN} back"), "http://h", "me/x", TOKEN)
    assert TOKEN not in line and "***" in line


def test_staging_replaces_an_earlier_folder_whole(lineage):
    first = upload(UploadRequest("b0", "me/b0", lineage, dry_run=True, step="1"))
    stray = first.folder / "stray.txt"
    stray.write_text("from an earlier staging")
    second = upload(UploadRequest("b0", "me/b0", lineage, dry_run=True, step="4"))
    assert second.folder == first.folder and not stray.exists()
    assert json.loads((second.folder / "config.json").read_text())["backlm_step"] == 4
    assert sorted(p.name for p in Path(second.folder).parent.iterdir()) == ["me--b0"]


def test_staging_a_checkpoint_twice_gives_the_same_weights_bytes(lineage):
    """A re-push must not upload the weights again: their sha256 depends on the checkpoint
    alone (safetensors' own writer orders the header map differently on every call)."""
    from backlm.experiment.checkpoint import sha256_file

    first = upload(UploadRequest("b0", "me/b0", lineage, dry_run=True, step="4"))
    sha = sha256_file(first.folder / "model.safetensors")
    second = upload(UploadRequest("b0", "me/b0", lineage, dry_run=True, step="4"))
    assert sha256_file(second.folder / "model.safetensors") == sha
    meta = header((second.folder / "model.safetensors").read_bytes())["__metadata__"]
    assert list(meta)[:7] == ["format", "direction", "phase", "step", "model_config",
                              "tokenizer_sha256", "backlm_version"]
