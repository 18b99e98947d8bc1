"""Chat datasets: the messages format, validation, the embedded default, import and the
SmolTalk download (from a loopback mirror)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backlm.atomic import OWNED
from backlm.data import chat
from backlm.data.chat import (
    CHAT_DATASET,
    build_default_chat,
    chat_shards,
    check_conversation,
    import_chat,
    prepare_chat,
    read_conversations,
    read_messages_jsonl,
    split_conversations,
    write_chat_shard,
)
from backlm.data.chat_download import download_chat
from backlm.data.datasets import DATASETS
from backlm.data.pydocs_chat import (
    describe_call,
    file_entries,
    first_paragraph,
    render_signature,
    shorten,
)
from backlm.errors import UserError
from tests.helpers import DOWNLOAD_FAST, LONG, write_jsonl, write_source

U, A = "user", "assistant"


def _msgs(*texts: str) -> list[dict[str, str]]:
    return [{"role": (U, A)[i % 2], "content": t} for i, t in enumerate(texts)]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))


# --- validation -------------------------------------------------------------------------------


def test_check_conversation_merges_system_and_drops_extra_keys() -> None:
    got = check_conversation(
        [{"role": "system", "content": "Be brief."}, {"role": U, "content": "Hi", "x": 1},
         {"role": A, "content": "Hello."}], "f line 1")
    assert got == [{"role": U, "content": "Be brief.\n\nHi"}, {"role": A, "content": "Hello."}]


@pytest.mark.parametrize("messages, fragment", [
    ([], "non-empty list"),
    ("hi", "non-empty list"),
    ([{"role": U}], "\"content\" keys"),
    ([{"role": "bot", "content": "x"}], "role 'bot'"),
    ([{"role": U, "content": 3}], "must be a string, not int"),
    ([{"role": U, "content": "  "}], "empty content"),
    (_msgs("a", "b") + [{"role": A, "content": "c"}], "turn 3 is assistant but should be user"),
    ([{"role": A, "content": "a"}], "turn 1 is assistant but should be user"),
    (_msgs("a", "b") + [{"role": "system", "content": "s"}], "system message may only come first"),
    ([{"role": "system", "content": "s"}], "followed by a user message"),
])
def test_check_conversation_rejects(messages, fragment: str) -> None:
    with pytest.raises(UserError, match="^chats.jsonl:7: ") as err:
        check_conversation(messages, "chats.jsonl:7")
    assert fragment in str(err.value)


def test_read_messages_jsonl_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("\ufeff" + json.dumps({"messages": _msgs("q1", "a1")}) + "\n\n   \n"
                    + json.dumps({"messages": _msgs("q2", "a2", "q3", "a3")}) + "\n",
                    encoding="utf-8")
    assert read_messages_jsonl(path) == [_msgs("q1", "a1"), _msgs("q2", "a2", "q3", "a3")]


@pytest.mark.parametrize("bad, fragment", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"text": "hi"}', 'no "messages" key (keys: text)'),
    (b'{"messages": [{"role": "user", "content": 5}]}', "message 1 content must be a string"),
    (b'{"messages": [{"role": "assistant", "content": "a"}]}', "should be user"),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "not valid UTF-8 (byte 0xe9"),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "lone surrogate \\ud800"),
])
def test_read_messages_jsonl_names_the_line(tmp_path: Path, bad: bytes, fragment: str) -> None:
    path = tmp_path / "chats.jsonl"
    good = json.dumps({"messages": _msgs("q", "a")}).encode()
    path.write_bytes(good + b"\n\n" + bad + b"\n" + good + b"\n")
    with pytest.raises(UserError) as err:
        read_messages_jsonl(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3: ") and fragment in message
    assert "\n" not in message


def test_read_messages_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        read_messages_jsonl(tmp_path / "nope.jsonl")


# --- shards -----------------------------------------------------------------------------------


def test_shard_round_trip_and_schema(tmp_path: Path) -> None:
    chats = [_msgs("q", "a"), _msgs("é", "ü", "x", "y")]
    write_chat_shard(tmp_path / "train_00000.parquet", chats)
    schema = pq.read_schema(tmp_path / "train_00000.parquet")
    assert schema.names == ["messages"]
    assert schema.field("messages").type == pa.list_(
        pa.struct([("role", pa.string()), ("content", pa.string())]))
    assert read_conversations(tmp_path / "train_00000.parquet") == chats


def test_read_accepts_json_string_column(tmp_path: Path) -> None:
    path = tmp_path / "train_00000.parquet"
    pq.write_table(pa.table({"messages": [json.dumps(_msgs("q", "a"))]}), path)
    assert read_conversations(path) == [_msgs("q", "a")]
    pq.write_table(pa.table({"messages": ["{oops"]}), path)
    with pytest.raises(UserError, match="row 1: `messages` is not valid JSON"):
        read_conversations(path)


def test_read_rejects_files_that_are_not_chat_shards(tmp_path: Path) -> None:
    no_column = tmp_path / "text.parquet"
    pq.write_table(pa.table({"text": ["hello"]}), no_column)
    with pytest.raises(UserError, match=r"text\.parquet has no `messages` column \(columns: text"):
        read_conversations(no_column)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet at all")
    with pytest.raises(UserError, match=r"cannot read .*junk\.parquet as a parquet chat shard"):
        read_conversations(junk)


def test_chat_shards_sorted_and_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"backlm data prepare --chat"):
        chat_shards(tmp_path / "absent", "train")
    for name in ("train_00001.parquet", "train_00000.parquet", "val_00000.parquet"):
        write_chat_shard(tmp_path / name, [_msgs("q", "a")])
    assert [p.name for p in chat_shards(tmp_path, "train")] == [
        "train_00000.parquet", "train_00001.parquet"]
    with pytest.raises(UserError, match="has no ood shards.*prepare --chat"):
        chat_shards(tmp_path, "ood")


def test_split_is_deterministic_by_hash() -> None:
    chats = [_msgs(f"question {i}", f"answer {i}") for i in range(3000)]
    train, val = split_conversations(chats)
    assert (sorted(map(str, train)), sorted(map(str, val))) == tuple(
        sorted(map(str, s)) for s in split_conversations(chats[::-1]))
    assert 20 <= len(val) <= 110 and len(train) + len(val) == 3000
    assert len(split_conversations(chats[:2])[1]) == 1  # tiny sets still get a val conversation


# --- questions from source --------------------------------------------------------------------


def _def(source: str):
    return ast.parse(source).body[0]


def test_render_signature_and_description() -> None:
    copy = render_signature(_def("def copy(src, dst, *, follow_symlinks=True): pass"))
    assert copy == "copy(src, dst, *, follow_symlinks=True)"
    text = describe_call(copy)
    assert "`src` and `dst` are required" in text
    assert "`follow_symlinks` (default `True`)" in text
    assert "must be passed by keyword" in text
    method = render_signature(
        _def("def m(self, x: int, y: dict = {'alpha': 1, 'beta': 2, 'gamma': 3, 'delta': 4},"
             " *a: int, **kw) -> int: pass"),
        drop_self=True)
    assert method == "m(x, y=..., *a, **kw)"
    assert describe_call("f()") == "It takes no arguments."


def test_first_paragraph_and_shorten() -> None:
    assert first_paragraph("dumps(obj) -> str\n\nSerialize ``obj`` to a JSON\nformatted str."
                           "\n\nMore.") == "Serialize ``obj`` to a JSON formatted str."
    assert first_paragraph("Tiny.\n\nAlso tiny.") == ""
    long = " ".join(f"Sentence number {i} is here." for i in range(60))
    cut = shorten(long)
    assert len(cut) <= 600 and cut.endswith("here.") and long.startswith(cut)


def _write_site(root: Path) -> Path:
    write_source(root / "shutil2.py", f'''\
        """High-level file operations for the tests. {LONG}"""

        def copy(src, dst, *, follow_symlinks=True):
            """Copy data and mode bits. The destination may be a directory. {LONG}"""

        def _private(x):
            """A private helper that must never be asked about. {LONG}"""

        class Copier(Base, object):
            """Copies files one after another for the tests. {LONG}"""

            def run(self, paths, dry=False):
                """Run the copier over every path in turn. {LONG}"""
                def inner():
                    """Nested helper docstring that has no public name. {LONG}"""
        ''')
    write_source(root / "_hidden" / "mod.py", f'''\
        def shown():
            """In a private package, so it is skipped. {LONG}"""
        ''')
    return root


def test_file_entries_names_kinds_and_signatures(tmp_path: Path) -> None:
    root = _write_site(tmp_path / "site")
    entries = {e[1]: e[:3] for e in file_entries((str(root / "shutil2.py"), "shutil2"))}
    assert entries == {
        "shutil2": ("module", "shutil2", ""),
        "shutil2.copy": ("function", "shutil2.copy", "copy(src, dst, *, follow_symlinks=True)"),
        "shutil2.Copier": ("class", "shutil2.Copier", "Base"),
        "shutil2.Copier.run": ("method", "shutil2.Copier.run", "run(paths, dry=False)"),
    }


def test_build_default_chat(tmp_path: Path, fake_site: Path) -> None:
    root = _write_site(fake_site)
    chats = build_default_chat(roots=[root], workers=1)
    assert chats == build_default_chat(roots=[root], workers=1)  # deterministic
    for c in chats:
        assert check_conversation(c, "built") == c
    text = json.dumps(chats)
    assert "_private" not in text and "inner" not in text and "shown" not in text
    answers = {c[0]["content"]: c[1]["content"] for c in chats}
    calls = [a for a in answers.values() if "copy(src, dst, *, follow_symlinks=True)" in a]
    assert calls and "`src` and `dst` are required" in calls[0]
    assert any("shutil2.copy" in q and a.startswith("Copy data and mode bits.")
               for q, a in answers.items())
    assert any("`shutil2`" in q and a.startswith("High-level file operations")
               for q, a in answers.items())
    assert any(len(c) == 4 for c in chats)  # some multi-turn conversations
    arith = [c for c in chats if c[1]["content"].startswith("The answer is ")]
    assert 0.12 <= len(arith) / len(chats) <= 0.28
    keys = [json.dumps(c) for c in chats]
    assert len(keys) == len(set(keys))
    assert all(len(m["content"]) <= 700 for c in chats for m in c)
    few = build_default_chat(roots=[root], max_docs=3, workers=1)
    assert len([c for c in few if c not in arith]) <= 3 * 2


# --- prepare ----------------------------------------------------------------------------------


def test_prepare_chat_writes_atomically_then_leaves_it(tmp_path: Path, fake_site: Path) -> None:
    from backlm.paths import dataset_dir

    folder = dataset_dir(CHAT_DATASET)
    stages = []
    summary = prepare_chat(folder, roots=[fake_site], workers=1,
                           progress=lambda s, d, t: stages.append(s))
    assert not summary.existed and summary.val >= 1 and summary.train > summary.val
    assert {"scan", "write"} <= set(stages)
    assert sorted(p.name for p in folder.iterdir()) == [OWNED, "train_00000.parquet",
                                                        "val_00000.parquet"]
    assert [p.name for p in folder.parent.iterdir()] == [CHAT_DATASET]  # no partial folder
    train = read_conversations(folder / "train_00000.parquet")
    assert len(train) == summary.train
    again = prepare_chat(folder, roots=[], workers=1)
    assert again.existed and (again.train, again.val) == (summary.train, summary.val)
    with pytest.raises(UserError, match="too little documented"):
        prepare_chat(folder, force=True, roots=[], workers=1)
    assert read_conversations(folder / "train_00000.parquet") == train  # old one untouched
    rebuilt = prepare_chat(folder, force=True, roots=[fake_site], max_docs=5, workers=1)
    assert not rebuilt.existed and rebuilt.train + rebuilt.val < summary.train + summary.val


def test_prepare_chat_nothing_found_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="too little documented"):
        prepare_chat(tmp_path / "data" / "c", roots=[tmp_path / "empty"], workers=1)
    assert not (tmp_path / "data" / "c").exists()
    assert not list((tmp_path / "data").glob(".*"))


# --- import -----------------------------------------------------------------------------------


def test_import_chat(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"messages": _msgs(f"q{i}", f"a{i}")}
                                           for i in range(50)])
    b = tmp_path / "b.parquet"
    write_chat_shard(b, [_msgs("pq", "pa")])
    summary = import_chat([a, b], tmp_path / "out")
    assert (summary.train + summary.val, summary.files) == (51, 2) and summary.val >= 1
    got = [c for s in ("train", "val") for p in chat_shards(tmp_path / "out", s)
           for c in read_conversations(p)]
    assert sorted(map(json.dumps, got)) == sorted(
        [json.dumps(_msgs(f"q{i}", f"a{i}")) for i in range(50)] + [json.dumps(_msgs("pq", "pa"))])
    with pytest.raises(UserError, match="already exists"):
        import_chat([a], tmp_path / "out")


def test_import_chat_bad_line_anywhere_writes_nothing(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [{"messages": _msgs("q", "a")}] * 3)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": _msgs("q", "a")},
                                               {"messages": [{"role": "user", "content": None}]}])
    with pytest.raises(UserError, match=r"bad\.jsonl:2: message 1 content must be a string"):
        import_chat([good, bad], tmp_path / "data" / "out")
    text = tmp_path / "text.parquet"
    pq.write_table(pa.table({"text": ["x"]}), text)
    with pytest.raises(UserError, match="no `messages` column"):
        import_chat([good, text], tmp_path / "data" / "out")
    with pytest.raises(UserError, match="between 0 and 1"):
        import_chat([good], tmp_path / "data" / "out", val_fraction=1.5)
    assert not (tmp_path / "data").exists()


# --- SmolTalk download ------------------------------------------------------------------------


def _serve_smoltalk(tmp_path: Path, server, n: int = 2) -> dict[str, bytes]:
    source = DATASETS["smoltalk"]
    published = {source.filename(i): [_msgs(f"train {i} q{j}", "a") for j in range(3)]
                 for i in range(n)}
    published[source.val_file] = [_msgs("val q", "val a")]
    files = {}
    for name, chats in published.items():
        path = tmp_path / "mirror" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_chat_shard(path, chats)
        server.files[f"/{name}"] = files[name] = path.read_bytes()
    return files


def test_download_chat_from_mirror(tmp_path: Path, server) -> None:
    files = _serve_smoltalk(tmp_path, server)
    folder = tmp_path / "home" / "data" / "smoltalk"
    summary = download_chat("smoltalk", folder, shards=2, base_url=server.url, **DOWNLOAD_FAST)
    assert summary.downloaded == 3 and summary.skipped == 0
    assert [p.name for p in chat_shards(folder, "train")] == ["train_00000.parquet",
                                                              "train_00001.parquet"]
    assert (folder / "val_00000.parquet").read_bytes() == files[DATASETS["smoltalk"].val_file]
    assert read_conversations(folder / "val_00000.parquet") == [_msgs("val q", "val a")]
    again = download_chat("smoltalk", folder, shards=1, base_url=server.url, **DOWNLOAD_FAST)
    assert again.skipped == 2 and again.downloaded == 0


def test_download_chat_rejects_bad_files_and_arguments(tmp_path: Path, server) -> None:
    _serve_smoltalk(tmp_path, server)
    text = tmp_path / "text.parquet"
    pq.write_table(pa.table({"text": ["x"]}), text)
    server.files["/" + DATASETS["smoltalk"].val_file] = text.read_bytes()
    folder = tmp_path / "home" / "data" / "smoltalk"
    with pytest.raises(UserError, match="not a parquet file with a `messages` column"):
        download_chat("smoltalk", folder, base_url=server.url, **DOWNLOAD_FAST)
    assert not (folder / "val_00000.parquet").exists()
    assert not list(folder.glob("val_*"))  # no .part left either
    with pytest.raises(UserError, match="--shards must be between 1 and 4"):
        download_chat("smoltalk", folder, shards=5)
    with pytest.raises(UserError, match="unknown chat set 'gsm8k'"):
        download_chat("gsm8k", folder)


def test_module_is_the_public_api() -> None:
    assert set(chat.__all__) >= {"CHAT_DATASET", "read_conversations", "chat_shards",
                                 "check_conversation", "read_messages_jsonl",
                                 "build_default_chat", "prepare_chat", "import_chat"}
