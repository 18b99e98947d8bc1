"""``backlm upload``: a dry run shows the staged files and the card and contacts nothing; a
push reaches the (fake) hub; the token never appears in any file or printed line; bad input
and hub refusals are one line, exit 2, with nothing written."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import pytest

from tests.fake_hub import running_hub
from tests.helpers import assert_user_error, run_cli, tree_snapshot


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (any request to it fails)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_dry_run_shows_the_files_and_the_card_and_sends_nothing(lineage, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: pytest.fail("hub client"))
    res = run_cli(["upload", "s1", "--repo", "me/s1", "--dry-run", "--endpoint",
                   closed_port_url(), "--license", "apache-2.0"], env={"HF_TOKEN": ""})
    assert res.exit_code == 0, res.output
    for name in ("model.safetensors", "config.json", "metadata.json", "README.md",
                 "backlm_tokenizer.json", "tokenizer.json", "modeling_backlm.py", "548,"):
        assert name in res.output
    assert "license: apache-2.0" in res.output and "direction:backward" in res.output
    assert "**A backward language model" in res.output and "nothing was sent" in res.output
    assert (lineage / "s1" / "hub_upload" / "me--s1" / "README.md").is_file()


def test_the_token_is_never_printed_or_written(lineage, tmp_path):
    token = "hf_" + secrets.token_hex(16)
    outputs = []
    with running_hub(token) as hub:
        env = {"HF_TOKEN": token}
        for args in (["upload", "b0", "--repo", "me/b0", "--endpoint", hub.url],
                     ["upload", "s1", "--repo", "me/s1", "--dry-run", "--endpoint", hub.url],
                     ["upload", "s1", "--repo", "me/s1", "--private", "--endpoint", hub.url]):
            res = run_cli(args, env=env)
            assert res.exit_code == 0, res.output
            outputs.append(res.output)
        hub.fail["create"] = 401  # an error line must not hold it either
        res = run_cli(["upload", "s1", "--repo", "me/s1", "--endpoint", hub.url], env=env)
        assert_user_error(res, "401")
        outputs.append(res.output)
        received = [d for repo in hub.repos.values() for d in repo["files"].values()]
        bodies = list(hub.bodies)
    assert "pushed me/b0" in outputs[0] and "pushed me/s1" in outputs[2]
    assert hub.repos["me/s1"]["private"] and len(received) >= 10
    assert all(token not in out for out in outputs)
    assert all(token.encode() not in data for data in received + bodies)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "uploads.json" for p in written)
    assert [p for p in written if token.encode() in p.read_bytes()] == []


@pytest.mark.parametrize(("args", "env", "words"), [
    (["upload", "s1", "--repo", "nameonly"], {}, "has no namespace"),
    (["upload", "s1", "--repo", "me/bad--name"], {}, "is not a hub model id"),
    (["upload", "nope", "--repo", "me/x"], {}, "no experiment 'nope'"),
    (["upload", "s1", "--repo", "me/x", "--step", "99"], {}, "no checkpoint at step 99"),
    (["upload", "s1", "--repo", "me/x", "--step", "soon"], {}, "is not a step"),
    (["upload", "s1", "--repo", "me/x", "--step", "best_5cat"], {}, "no best_5cat.json"),
    (["upload", "s1", "--repo", "me/x"], {"HF_TOKEN": ""}, "set HF_TOKEN (or pass --token)"),
])
def test_bad_input_is_one_line_and_writes_nothing(lineage, args, env, words):
    before = tree_snapshot(lineage)
    res = run_cli([*args, "--endpoint", closed_port_url()],
                  env={"HF_TOKEN": "hf_x", **env})
    assert_user_error(res, words)
    assert tree_snapshot(lineage) == before


def test_a_refused_token_is_one_line_and_writes_nothing(lineage):
    before = tree_snapshot(lineage)
    with running_hub("the-right-token") as hub:
        res = run_cli(["upload", "s1", "--repo", "me/s1", "--endpoint", hub.url,
                       "--token", "a-wrong-token"])
    line = assert_user_error(res, "refused the token (401 Unauthorized)")
    assert "a-wrong-token" not in line
    assert tree_snapshot(lineage) == before
    assert not Path(lineage / "s1" / "hub_upload").exists()
