"""Shared fixtures: a byte-level tokenizer, tiny parquet datasets, an experiments folder and
local HTTP servers (helpers that test files import live in tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backlm.direction import SpecialIds


class ByteTokenizer:
    """Bytes 0..255 plus the special tokens: fast, exact and dependency-free for tests."""

    special_ids = SpecialIds(
        bos=256, forward=257, backward=258,
        user_start=259, user_end=260, assistant_start=261, assistant_end=262,
    )
    vocab_size = 263

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


@pytest.fixture(autouse=True, scope="session")
def _peak_cache_in_tmp(tmp_path_factory):
    """Measured CPU peaks go to a file of the session's, never the user's BACKLM_HOME."""
    from backlm import paths

    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("peak") / "cpu_peak.json"
    mp.setattr(paths, "peak_cache_file", lambda: cache)
    yield
    mp.undo()


@pytest.fixture
def byte_tok() -> ByteTokenizer:
    return ByteTokenizer()


def make_docs(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct documents of varied length (some longer than a test row)."""
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
    docs = []
    for i in range(n):
        k = rng.choice([1, 2, 3, 5, 8, 13, 30])
        docs.append(f"doc{i}: " + " ".join(rng.choice(words) for _ in range(k)) + ".")
    return docs


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A dataset folder with 2 train shards (several row groups each) and 1 val shard."""
    from backlm.data.shards import write_shard

    d = tmp_path / "data" / "tiny"
    docs = make_docs(600)
    write_shard(d / "train_00000.parquet", docs[:250], row_group_docs=50)
    write_shard(d / "train_00001.parquet", docs[250:500], row_group_docs=50)
    write_shard(d / "val_00000.parquet", docs[500:], row_group_docs=50)
    return d


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """BACKLM_HOME with a tiny dataset ("tiny") and its tokenizer; experiments in tmp;
    wandb never online."""
    from backlm.data.shards import write_shard
    from backlm.tokenizer import Tokenizer

    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BACKLM_EXPERIMENTS", str(tmp_path / "exps"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    d = tmp_path / "home" / "data" / "tiny"
    docs = make_docs(400)
    write_shard(d / "train_00000.parquet", docs[:360], row_group_docs=40)
    write_shard(d / "val_00000.parquet", docs[360:], row_group_docs=40)
    Tokenizer.train(docs, vocab_size=300).save(d / "tokenizer")
    return tmp_path


@pytest.fixture(scope="session")
def phase_world(tmp_path_factory) -> Path:
    """Built once per session (read it, never write it): ``home`` with the tiny text dataset
    and the "tinychat" chat dataset, ``exps`` with a backward base ``b0`` and its SFT child
    ``s1`` (see :func:`tests.helpers.build_phase_world`)."""
    from tests.helpers import build_phase_world

    root = tmp_path_factory.mktemp("phase_world")
    build_phase_world(root)
    return root


@pytest.fixture(scope="session")
def serve_world(phase_world, tmp_path_factory) -> Path:
    """Built once per session (read it, never write it): an experiments folder with the phase
    world's backward ``b0``/``s1`` and a bidirectional base ``bi0`` with its SFT ``bi1``."""
    from tests.helpers import build_serve_world

    return build_serve_world(phase_world, tmp_path_factory.mktemp("serve_world"))


@pytest.fixture(scope="session")
def compare_world(phase_world, serve_world, tmp_path_factory) -> Path:
    """Built once per session (read it, never write it): the serve world's experiments plus a
    forward base ``f0`` on the same data and seed as ``b0`` (for ``backlm compare``)."""
    from tests.helpers import build_compare_world

    return build_compare_world(phase_world, serve_world, tmp_path_factory.mktemp("compare"))


@pytest.fixture(scope="session")
def report_world(phase_world, serve_world, tmp_path_factory) -> Path:
    """Built once per session (read it, never write it; copy with
    :func:`tests.helpers.copy_experiments`): the serve world's experiments filled for reports,
    plus a crashed run (see :func:`tests.helpers.build_report_world`). Returns the experiments
    folder."""
    from tests.helpers import build_report_world

    return build_report_world(phase_world, serve_world, tmp_path_factory.mktemp("report"))


@pytest.fixture
def served(serve_world, phase_world, monkeypatch) -> Path:
    """The serve world as the experiments folder (BACKLM_HOME the phase world's); read-only."""
    from tests.helpers import use_world

    use_world(monkeypatch, phase_world, serve_world)
    return serve_world


@pytest.fixture
def lineage(phase_world, tmp_path, monkeypatch) -> Path:
    """A private copy of the phase world's experiments (``b0``, ``s1``), returned as the
    experiments folder; BACKLM_HOME is the shared world's (branches must not write there)."""
    from tests.helpers import copy_experiments, use_world

    exps = copy_experiments(phase_world / "exps", tmp_path / "exps")
    use_world(monkeypatch, phase_world, exps)
    return exps


@pytest.fixture
def exps(tmp_path, monkeypatch) -> Path:
    """An experiments folder with one experiment at step 12 (checkpoint 8, metrics to 12)."""
    import json

    from backlm.atomic import write_json

    root = tmp_path / "exps"
    exp = root / "e1"
    (exp / "checkpoints" / "step_000008").mkdir(parents=True)
    for name in ("meta.json", "model.safetensors"):
        (exp / "checkpoints" / "step_000008" / name).write_text("{}")
    write_json(exp / "metadata.json", {"id": "e1", "phase": "base", "status": "running"})
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(13)]
    (exp / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 13, "lo')  # torn
    monkeypatch.setenv("BACKLM_EXPERIMENTS", str(root))
    return root


@pytest.fixture
def server():
    """A 127.0.0.1 server that drops connections, fails and ignores ranges on demand
    (:class:`tests.helpers.FakeServer`)."""
    import http.server
    import threading

    from tests.helpers import FakeServer, fake_server_handler

    state = FakeServer()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), fake_server_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def mirror(tmp_path):
    """A 127.0.0.1 http.server serving the task files under their published sub-paths."""
    import functools
    import http.server
    import threading

    from tests.helpers import write_task_sets

    root = tmp_path / "mirror"
    write_task_sets(root, published=True)
    (root / "html").mkdir()
    (root / "html" / "all").mkdir()
    (root / "html" / "all" / "test-00000-of-00001.parquet").write_text("<html>login</html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fake_site(tmp_path: Path) -> Path:
    """A folder of .py files shaped like an installation, with known docstrings."""
    from tests.helpers import write_fake_site

    return write_fake_site(tmp_path)


@pytest.fixture
def topics(tmp_path: Path) -> Path:
    """A help-topics module shaped like ``pydoc_data/topics.py`` (the OOD source)."""
    from tests.helpers import write_topics

    return write_topics(tmp_path)
