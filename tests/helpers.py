"""Helpers that several test files share (shared fixtures live in tests/conftest.py).

Sections: training a tiny model through the CLI; the research log; task sets; imported
datasets; a fault-injecting HTTP server; a fake Python installation for the corpus; the 5CAT
world (a docstring dataset and tiny trained models).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import socket
import sysconfig
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from backlm.atomic import write_json
from backlm.cli import app
from backlm.compare import stats
from backlm.data.datasets import DATASETS
from backlm.experiment.folder import Experiment
from backlm.model import native as native_module

# --- training through the CLI -----------------------------------------------------------------
# A 2-layer, width-64 model on the "tiny" dataset of the `home` fixture (tests/conftest.py).

TINY = [
    "model.depth=2", "model.width=64", "model.head_dim=32", "model.seq_len=32",
    "model.vocab_size=300", "train.device_batch_size=4", "train.total_batch_tokens=256",
    "train.eval_every=4", "train.eval_tokens=512", "train.save_every=4", "train.device=cpu",
    "data.dataset=tiny", "data.docs_per_batch=32", "data.buffer_docs=16", "log.wandb=off",
    # exact losses, resumes equal to uninterrupted runs and the fused C kernels all assume fp32;
    # `auto` would train in bf16 on a CPU with native bf16 (AVX512-BF16, AMX)
    "train.dtype=fp32",
]


def tiny_args(*extra: str, steps: int = 8) -> list[str]:
    args = ["train", "--max-steps", str(steps)]
    for s in TINY:
        args += ["--set", s]
    return args + list(extra)


def metrics(exp: Path) -> list[dict]:
    return [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines()]


def losses(exp: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(exp) if "loss" in m}


def train_subprocess(exp_id: str, env: dict | None = None, resume: bool = False,
                     steps: int = 12, extra: tuple[str, ...] = ()):
    """``backlm train`` of a tiny backward model (or ``--resume``) in a real process, so a
    SIGKILL or Ctrl-C hits a process of its own."""
    import os
    import subprocess
    import sys

    args = ["train", "--resume", exp_id] if resume else tiny_args(
        "--direction", "backward", "--id", exp_id, *extra, steps=steps)
    return subprocess.run([sys.executable, "-m", "backlm.cli", *args],
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=300)


def run_cli(args, env=None):
    return CliRunner().invoke(app, args, env=env)


# --- the one-line user error ------------------------------------------------------------------


def assert_user_error(res, *fragments: str) -> str:
    """Assert that ``res`` (a CliRunner result or a finished subprocess) ended the way a user
    error must: exit code 2 and exactly one non-empty line of output, on stderr, reading
    ``error: ...`` and naming every fragment (case-insensitive), with no traceback. Returns
    that line."""
    if hasattr(res, "returncode"):  # subprocess.CompletedProcess
        err, crash = res.stderr or "", None
        code, out = res.returncode, (res.stdout or "") + err
    else:  # click's Result: `output` interleaves stdout and stderr
        code, out, err = res.exit_code, res.output, res.stderr
        crash = res.exception if not isinstance(res.exception, SystemExit) else None
    shown = f"exit code {code}, output:\n{out}" + (f"\nexception: {crash!r}" if crash else "")
    assert crash is None, shown
    assert code == 2, shown
    assert "Traceback" not in out, shown
    lines = [x.strip() for x in out.splitlines() if x.strip()]
    assert len(lines) == 1, shown
    line = lines[0]
    assert line.startswith("error: ") and len(line) > len("error: "), shown
    assert line in err, f"the error line is not on stderr; {shown}"
    missing = [f for f in fragments if f.lower() not in line.lower()]
    assert not missing, f"the line does not name {missing}; {shown}"
    return line


# --- phases: a tiny chat dataset and branch options ------------------------------------------

CHAT_TALKS = [
    [{"role": "user", "content": "Hello, who are you?"},
     {"role": "assistant", "content": "A tiny model that reads both ways."},
     {"role": "user", "content": "What do you read?"},
     {"role": "assistant", "content": "alpha beta gamma delta."}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "Name a letter."},
     {"role": "assistant", "content": "theta."}],
    [{"role": "user", "content": "Count to three."},
     {"role": "assistant", "content": "one two three."},
     {"role": "user", "content": "And back?"},
     {"role": "assistant", "content": "three two one."}],
]


def tiny_chat(home: Path, name: str = "tinychat") -> Path:
    """A small chat dataset ``name`` in the `home` fixture's BACKLM_HOME: arithmetic problems
    and a few hand-written multi-turn conversations, one train and one val shard."""
    from backlm.data.arith import problems
    from backlm.data.chat import write_chat_shard

    folder = Path(home) / "home" / "data" / name
    train = [p.messages() for p in problems(40, seed=1)] + CHAT_TALKS
    val = [p.messages() for p in problems(8, seed=2)] + CHAT_TALKS[:1]
    write_chat_shard(folder / "train_00000.parquet", train)
    write_chat_shard(folder / "val_00000.parquet", val)
    return folder


# Keep a branch tiny: the child otherwise takes the phase defaults (100 steps, eval every 25).
BRANCH_FAST = ["--set", "chat.dataset=tinychat", "--set", "train.eval_every=2",
               "--set", "train.save_every=2"]
RL_FAST = ["--set", "rl.group_size=2", "--set", "rl.prompts_per_step=2",
           "--set", "rl.max_new_tokens=4", "--set", "rl.eval_prompts=2"]


# A base that conversations fit: 128-token rows (one 4-row stream per step).
PHASE_BASE = ["--set", "model.seq_len=128", "--set", "train.total_batch_tokens=512",
              "--set", "log.attention_every=2"]


def build_phase_world(root: Path) -> None:
    """``root/home`` (the `home` fixture's "tiny" dataset and tokenizer, plus "tinychat") and
    ``root/exps`` with a finished backward base ``b0`` (checkpoints 1 and 4, best 4) and its
    SFT child ``s1`` (2 steps, checkpoints 1 and 2)."""
    from backlm.data.shards import write_shard
    from backlm.tokenizer import Tokenizer
    from tests.conftest import make_docs

    d = root / "home" / "data" / "tiny"
    docs = make_docs(400)
    write_shard(d / "train_00000.parquet", docs[:360], row_group_docs=40)
    write_shard(d / "val_00000.parquet", docs[360:], row_group_docs=40)
    Tokenizer.train(docs, vocab_size=300).save(d / "tokenizer")
    tiny_chat(root)
    with pytest.MonkeyPatch.context() as mp:
        use_world(mp, root, root / "exps")
        res = run_cli(tiny_args("--direction", "backward", "--id", "b0", *PHASE_BASE, steps=4))
        assert res.exit_code == 0, res.output
        res = run_cli(branch_args("sft", "b0", "--id", "s1", "--init-lr-frac", "0.05"))
        assert res.exit_code == 0, res.output


def build_serve_world(phase_world: Path, root: Path) -> Path:
    """``root/exps``: the phase world's backward ``b0`` and SFT ``s1``, plus a bidirectional
    base ``bi0`` and its SFT child ``bi1`` (for chat and serve: every order). Returns it."""
    exps = copy_experiments(phase_world / "exps", root / "exps")
    with pytest.MonkeyPatch.context() as mp:
        use_world(mp, phase_world, exps)
        res = run_cli(tiny_args("--direction", "bidirectional", "--id", "bi0", *PHASE_BASE,
                                steps=4))
        assert res.exit_code == 0, res.output
        res = run_cli(branch_args("sft", "bi0", "--id", "bi1", "--init-lr-frac", "0.05"))
        assert res.exit_code == 0, res.output
    return exps


def build_compare_world(phase_world: Path, serve_world: Path, root: Path) -> Path:
    """``root/exps``: the serve world's ``b0``, ``s1``, ``bi0``, ``bi1`` and a forward base
    ``f0`` trained like ``b0`` (same data, seed and steps: the same validation documents).
    Returns it."""
    exps = copy_experiments(serve_world, root / "exps")
    with pytest.MonkeyPatch.context() as mp:
        use_world(mp, phase_world, exps)
        res = run_cli(tiny_args("--direction", "forward", "--id", "f0", *PHASE_BASE, steps=4))
        assert res.exit_code == 0, res.output
    return exps


def use_world(mp: pytest.MonkeyPatch, root: Path, exps: Path) -> None:
    """Point BACKLM_HOME at ``root/home`` and the experiments folder at ``exps``."""
    mp.setenv("BACKLM_HOME", str(root / "home"))
    mp.setenv("BACKLM_EXPERIMENTS", str(exps))
    mp.setenv("WANDB_MODE", "offline")
    mp.delenv("WANDB_API_KEY", raising=False)


def copy_experiments(src: Path, dst: Path) -> Path:
    """Copy an experiments folder, rewriting the absolute paths its records hold (parent
    links, chains) so the copy's lineage points into the copy."""
    import shutil

    shutil.copytree(src, dst)
    for path in [*dst.rglob("*.json"), *dst.rglob("*.yaml")]:
        text = path.read_text()
        if str(src) in text:
            path.write_text(text.replace(str(src), str(dst)))
    return dst


def branch_args(phase: str, parent: str, *extra: str, steps: int = 2) -> list[str]:
    """``backlm branch PHASE --parent PARENT`` with tiny settings and ``steps`` steps."""
    args = ["branch", phase, "--parent", parent, "--max-steps", str(steps), *BRANCH_FAST]
    return args + (RL_FAST if phase == "rl" else []) + list(extra)


def tree_snapshot(*roots: Path) -> dict[str, str]:
    """``{path: sha256 | "dir"}`` of every file and folder below ``roots`` (what a refused
    command must leave byte-identical)."""
    import hashlib
    import os

    out: dict[str, str] = {}
    for root in roots:
        for dirpath, _dirnames, filenames in os.walk(root):
            out[dirpath] = "dir"
            for name in filenames:
                p = Path(dirpath) / name
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --- comparisons: experiments without weights, stored evaluations only -----------------------


def write_stored(exp: Experiment, member, hashes: list[str] | None = None) -> None:
    """Store ``member``'s readings as ``backlm eval`` result files of ``exp``."""
    for order, r in member.readings.items():
        records = []
        for split, d in r.splits.items():
            per_doc = dict(d["per_document"], hash=hashes or d["per_document"]["hash"])
            records.append({"split": split, "bpb": d["bpb"], "loss": d["loss"],
                            "per_document": per_doc})
        write_json(exp.evaluation_path("base", order, "lm"), {
            "experiment": exp.id, "task": "lm", "direction": order, "native": r.native,
            "model_direction": member.direction, "phase": "base", "step": r.step,
            "summary": {"metric": "val_loss", "score": 1.0}, "records": records})


FAKE_DOCS = 60  # documents of every fake experiment's stored evaluations
_FAKE_RNG = np.random.default_rng(0)
FAKE_BYTES = _FAKE_RNG.integers(50, 400, FAKE_DOCS).astype(float)
FAKE_DIFFICULTY = 1.6 + 0.4 * _FAKE_RNG.standard_normal(FAKE_DOCS)


def fake_experiment(root: Path, exp_id: str, direction: str, depth: int, seed: int,
                    gap: float = 0.0, hashes: list[str] | None = None) -> Experiment:
    """A finished experiment without weights: config, metadata, metrics and stored lm
    evaluations whose forward reading is ``gap`` bits per byte worse than the backward one."""
    from backlm.experiment import folder as xp

    cfg = {"phase": "base", "train": {"seed": seed, "total_batch_tokens": 512},
           "model": {"depth": depth, "head_dim": 64}, "data": {"direction": direction}}
    exp = xp.create(root, exp_id, config_yaml=yaml.safe_dump(cfg), parent_link=None,
                    metadata={"id": exp_id, "phase": "base", "direction": direction,
                              "depth": depth, "status": "finished"})
    exp.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 0, "val_bpb": 2.5}, {"step": 1, "loss": 4.0, "tokens": 512},
        {"step": 2, "loss": 3.0, "tokens": 1024, "val_bpb": 1.7 + 0.01 * seed})))
    noise = np.random.default_rng(1000 * depth + seed + (direction == "forward"))
    for order in ("forward", "backward"):
        doc_bpb = FAKE_DIFFICULTY + (gap if order == "forward" else 0.0) + (
            0.0 if direction in (order, "bidirectional") else 0.3)
        doc_bpb = doc_bpb + 0.05 * noise.standard_normal(FAKE_DOCS)
        nats = doc_bpb * math.log(2) * FAKE_BYTES
        per_doc = {"hash": hashes or [f"doc{i}" for i in range(FAKE_DOCS)],
                   "bytes": FAKE_BYTES.astype(int).tolist(), "tokens": [10] * FAKE_DOCS,
                   "nats": nats.tolist()}
        write_json(exp.evaluation_path("base", order, "lm"), {
            "direction": order, "native": direction in (order, "bidirectional"), "step": 2,
            "records": [{"split": "val", "bpb": stats.bpb(nats, FAKE_BYTES), "loss": 1.0,
                         "per_document": per_doc}]})
    return exp


# --- the research log (``{phase}.h5``) --------------------------------------------------------

LOG_FAST = ["--set", "train.save_every=4", "--set", "log.flush_every=2",
            "--set", "log.per_token_every=2", "--set", "log.stats_every=3",
            "--set", "log.attention_every=3"]


def train_logged(exp_id: str, *extra: str, steps: int = 6, direction: str = "forward",
                 wandb: str = "off"):
    """Train a tiny model with the research log written at short cadences."""
    res = run_cli(tiny_args("--direction", direction, "--id", exp_id, "--set",
                            f"log.wandb={wandb}", *LOG_FAST, *extra, steps=steps))
    assert res.exit_code == 0, res.output
    return res


def read_h5(path: Path):
    """Open a research log for reading the way a live reader must (SWMR)."""
    import h5py

    return h5py.File(path, "r", libver="latest", swmr=True)


def hdf5_logger(path: Path, **kw):
    """A research-log writer with a tiny schema: two scalars, one parameter, one layer."""
    from backlm.logs.hdf5 import Hdf5Logger, Schema

    schema = Schema(scalars=("loss", "val_loss"), params=("w",), layers=("blocks.0",), rows=1,
                    seq_len=4)
    return Hdf5Logger(path, schema, {"schema_version": 1}, **kw)


# --- task sets (ARC, MMLU, GSM8K) -------------------------------------------------------------

ARC_EASY = [
    {"id": "Mercury_1", "question": "Which gas do plants take in?",
     "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"],
                 "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "NYSED_2", "question": "What melts ice fastest?",
     "choices": {"text": ["shade", "wind", "sunlight"], "label": ["1", "2", "3"]},
     "answerKey": "3"},
    {"id": "Broken_3", "question": "No valid key?",
     "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"},
]
ARC_CHALLENGE = [
    {"id": "Chal_1", "question": "Which is a mammal?",
     "choices": {"text": ["shark", "whale", "trout", "eel"], "label": ["A", "B", "C", "D"]},
     "answerKey": "B"},
]
MMLU = [
    {"question": "What is 2 + 2?", "subject": "elementary_mathematics",
     "choices": ["3", "4", "5", "22"], "answer": 1},
    {"question": "The SI unit of force is the", "subject": "high_school_physics",
     "choices": ["joule", "watt", "newton", "pascal"], "answer": 2},
]
GSM8K = [
    {"question": "Tom has 3 apples and buys 2 more. How many apples does he have?",
     "answer": "Tom has 3 + 2 = <<3+2=5>>5 apples.\n#### 5"},
    {"question": "A farm sells 1,000 eggs a day for 2 days. How many eggs is that?",
     "answer": "It sells 1,000 * 2 = <<1000*2=2000>>2,000 eggs.\n#### 2,000"},
]
# Published sub-paths of each task's test file (what --base-url mirrors must serve).
PUBLISHED = {name: DATASETS[name].filename(0) for name in ("arc-easy", "arc-challenge", "mmlu",
                                                           "gsm8k")}
ROWS = {"arc-easy": ARC_EASY, "arc-challenge": ARC_CHALLENGE, "mmlu": MMLU, "gsm8k": GSM8K}


def write_task_sets(root: Path, published: bool = False) -> None:
    """Write every task's parquet file: under ``root/<task>/`` as ``backlm eval`` reads them,
    or under the published sub-paths (``ARC-Easy/test-…``) as a download mirror serves them."""
    for name, rows in ROWS.items():
        path = root / (PUBLISHED[name] if published else f"{name}/{Path(PUBLISHED[name]).name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)


# --- imported datasets ------------------------------------------------------------------------


def split_texts(directory: Path, split: str) -> list[str]:
    """Every document of ``split`` in a dataset folder, shard by shard."""
    from backlm.data.shards import iter_texts

    return [t for p in sorted(directory.glob(f"{split}_*.parquet")) for t in iter_texts(p)]


def all_texts(directory: Path) -> list[str]:
    """Every train and val document of a dataset folder, sorted."""
    return sorted(split_texts(directory, "train") + split_texts(directory, "val"))


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --- a fault-injecting HTTP server (the `server` fixture) -------------------------------------

DOWNLOAD_FAST = {"backoff": 0.001, "timeout": 5}


class FakeServer:
    """Serves ``files`` by URL path (``/redirect/<path>`` answers 302 to ``/<path>``);
    ``faults[path]`` lists behaviours for the next requests: ``drop`` (full Content-Length,
    half the bytes, then close), ``500``, ``429``, ``404``, ``norange`` (answer 200 with the
    whole file even to a Range request)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def next_fault(self, path: str) -> str | None:
        with self.lock:
            queue = self.faults.get(path) or []
            return queue.pop(0) if queue else None


def fake_server_handler(state: FakeServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            with state.lock:
                state.requests.append((self.path, self.headers.get("Range")))
            if self.path.startswith("/redirect/"):  # like huggingface.co -> its CDN
                self.send_response(302)
                self.send_header("Location", self.path[len("/redirect"):])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            fault = state.next_fault(self.path)
            data = state.files.get(self.path)
            if fault in ("404", "429", "500") or data is None:
                code = int(fault) if fault else 404
                body = b"<html>error</html>"
                self.send_response(code)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            start = self._range_start()
            if start is not None and fault != "norange":
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                body = data[start:]
            else:
                self.send_response(200)
                body = data
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault == "drop":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _range_start(self) -> int | None:
            value = self.headers.get("Range")
            if not value or not value.startswith("bytes="):
                return None
            return int(value[len("bytes="):].split("-")[0])

    return Handler


def parquet_bytes(tmp_path: Path, index: int, n: int = 300) -> bytes:
    from backlm.data.shards import write_shard

    path = tmp_path / "src" / f"shard_{index:05d}.parquet"
    write_shard(path, [f"shard {index} document {i} " + "word " * (i % 17) for i in range(n)])
    return path.read_bytes()


def serve_shards(tmp_path: Path, server: FakeServer, n: int) -> list[bytes]:
    shards = [parquet_bytes(tmp_path, i) for i in range(n)]
    for i, data in enumerate(shards):
        server.files[f"/shard_{i:05d}.parquet"] = data
    return shards


# --- a fake Python installation for the docstring corpus --------------------------------------

LONG = "This sentence pads a docstring well past the minimum length that the corpus keeps."
SHARED = f"Shared docstring that appears in two packages. {LONG}"


def write_source(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(textwrap.dedent(text).encode(encoding))


def write_fake_site(tmp_path: Path) -> Path:
    """A folder of .py files shaped like an installation, with known docstrings."""
    root = tmp_path / "site"
    write_source(root / "pkg_a" / "__init__.py", f'''\
        #!/usr/bin/env python
        """Package A module docstring. {LONG}"""

        import os


        class Widget(object):
            r"""Widget class docstring with a raw \\d escape. {LONG}"""

            def method(self, x: int,
                       y: int = 2) -> int:  # a long signature
                """Method docstring.

                Args:
                    x: the first number. {LONG}
                """
                if x:
                    """Not a docstring: the first statement of an if block. {LONG}"""
                return x

            async def fetch(self):
                \'\'\'Async method docstring. {LONG}\'\'\'

        def short():
            """Too short."""

        def outer():
            def inner():
                """Inner function docstring. {LONG}"""
            return inner
        ''')
    write_source(root / "pkg_b" / "mod.py", f'''\
        def copy_one():
            """{SHARED}"""
        ''')
    write_source(root / "pkg_a" / "dup.py", f'''\
        def copy_two():
            """{SHARED}"""
        ''')
    sentinel = root.parent / "imported.txt"
    write_source(root / "pkg_b" / "boom.py", f'''\
        """Module that must never be imported. {LONG}"""
        open({str(sentinel)!r}, "w").write("imported")
        raise RuntimeError("imported!")
        ''')
    write_source(root / "pkg_b" / "latin.py", f'''\
        # -*- coding: latin-1 -*-
        """Café crème, written in Latin-1. {LONG}"""
        ''', encoding="latin-1")
    (root / "pkg_b" / "binary.py").write_bytes(b'"""\xff\xfe broken ' + LONG.encode() + b'"""')
    write_source(root / "pkg_b" / "broken.py", f'''\
        def broken(:
            """Broken file docstring. {LONG}"""
        ''')
    write_source(root / "pkg_a" / "tests" / "test_a.py", f'''\
        def test_thing():
            """Test-folder docstring. {LONG}"""
        ''')
    for i in range(40):
        write_source(root / "gen" / f"m{i:02d}.py", f'''\
            """Generated module number {i}. {LONG}"""

            def f{i}():
                """Generated function number {i}. {LONG}"""
            ''')
    return root


def write_topics(tmp_path: Path) -> Path:
    """A pydoc_data/topics.py look-alike: two help topics and a blank one."""
    path = tmp_path / "topics.py"
    write_source(path, f"""\
        # Autogenerated help topics
        topics = {{'assert': 'The assert statement. {LONG}',
                  'with': 'The with statement.\\n{LONG}',
                  'empty': '   ',
                  }}
        """)
    return path


# --- the 5CAT world ---------------------------------------------------------------------------
# One small corpus (docstrings of a few standard-library packages; the interpreter's help
# topics as OOD) and tiny models trained on it.

FIVECAT_TINY = [
    "model.depth=2", "model.width=64", "model.head_dim=32", "model.seq_len=64",
    "model.vocab_size=512", "train.device_batch_size=16", "train.total_batch_tokens=1024",
    "train.eval_every=50", "train.eval_tokens=2048", "train.save_every=1000",
    "train.device=cpu", "data.dataset=stdlib", "data.docs_per_batch=64",
    "data.buffer_docs=64", "log.hdf5=false",
    "train.dtype=fp32",  # the gates' margins were measured in fp32 (`auto` is bf16 on some CPUs)
]
FIVECAT_STEPS = 100  # enough for every gate to pass with a margin (README, ## 5CAT)
FIVECAT_PACKAGES = ("email", "json", "asyncio", "logging", "unittest", "http", "xml",
                    "importlib", "concurrent", "multiprocessing")


def fivecat_train_args(direction: str, exp_id: str, *extra: str,
                       steps: int = FIVECAT_STEPS) -> list[str]:
    args = ["train", "--direction", direction, "--id", exp_id, "--max-steps", str(steps),
            "--wandb", "off"]
    for s in FIVECAT_TINY:
        args += ["--set", s]
    return args + list(extra)


def fivecat_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def write_fivecat_data(root: Path) -> None:
    """The ``stdlib`` dataset under ``root/home`` (val: every 10th document; OOD: help
    topics) and its tokenizer."""
    from backlm.data import corpus
    from backlm.data.shards import write_shard
    from backlm.tokenizer import Tokenizer

    std = Path(sysconfig.get_paths()["stdlib"])
    docs = corpus.extract_docs(corpus.source_files([std / p for p in FIVECAT_PACKAGES]),
                               workers=1)
    train = [d for i, d in enumerate(docs) if i % 10]
    d = root / "home" / "data" / "stdlib"
    write_shard(d / "train_00000.parquet", train)
    write_shard(d / "val_00000.parquet", docs[::10])
    write_shard(d / "ood_00000.parquet", corpus.ood_docs(corpus.default_ood_source()))
    Tokenizer.train(train, vocab_size=512).save(d / "tokenizer")


@contextlib.contextmanager
def fivecat_home(root: Path):
    """BACKLM_HOME (and the experiments folder) for the 5CAT tests, with their dataset, for as
    long as the block runs."""
    write_fivecat_data(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKLM_HOME", str(root / "home"))
        mp.setenv("BACKLM_EXPERIMENTS", str(root / "exps"))
        yield root


def fivecat_trained(home: Path, direction: str, exp_id: str, *extra: str,
                    steps: int = FIVECAT_STEPS) -> Path:
    res = fivecat_cli(*fivecat_train_args(direction, exp_id, *extra, steps=steps))
    assert res.exit_code == 0, res.output
    return home / "exps" / exp_id


def fivecat_command(exp: Path, *extra: str) -> tuple[int, str, dict]:
    """Run ``backlm 5cat`` on ``exp``; exit code, output and the JSON result it saved."""
    res = fivecat_cli("5cat", exp.name, *extra)
    saved = sorted(exp.glob("evaluations/*/fivecat/*.json"), key=lambda p: p.stat().st_mtime)
    return res.exit_code, res.output, json.loads(saved[-1].read_text()) if saved else {}


# --- the fused C kernels: both paths on the same inputs ---------------------------------------

native = pytest.mark.skipif(native_module.lib is None, reason="fused C kernels not built")


def both_ways(fn, *inputs: torch.Tensor):
    """``fn(*inputs)`` and the gradients of a fixed random projection of its outputs, with the
    C kernels on and then off."""
    results = []
    for on in (True, False):
        previous = native_module.set_native(on)
        try:
            leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
            outs = fn(*leaves)
            outs = outs if isinstance(outs, tuple) else (outs,)
            g = torch.Generator().manual_seed(7)
            total = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)
            total.backward()
            results.append(([o.detach() for o in outs], [t.grad for t in leaves if t.requires_grad]))
        finally:
            native_module.set_native(previous)
    return results


def assert_same(results, atol=2e-5, rtol=1e-4):
    (outs_n, grads_n), (outs_t, grads_t) = results
    for a, b in zip(outs_n + grads_n, outs_t + grads_t, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# --- the training loop's state, for callbacks tested without a run -----------------------------


def loop_state(exp_path: Path | None = None, cfg=None, model=None, tokenizer=None,
               step: int = 0, data_dir: Path | None = None):
    """A :class:`~backlm.callbacks.LoopState` of rank 0 on CPU (only what is given is real)."""
    from backlm.callbacks import LoopState, RunInfo
    from backlm.config import RunConfig
    from backlm.distributed import DistInfo
    from backlm.experiment.folder import Experiment

    info = RunInfo(exp=Experiment(exp_path or Path(".")), cfg=cfg or RunConfig(),
                   dist=DistInfo(), model=model, tokenizer=tokenizer,
                   device=torch.device("cpu"), device_name="cpu", is_cuda=False,
                   data_dir=data_dir or Path("."), autocast=lambda: contextlib.nullcontext())
    state = LoopState(info)
    state.advance(step, 0)
    return state


# --- experiment lineages (``backlm ls --tree``) -----------------------------------------------


def make_child(root: Path, exp_id: str, parent: str | None = None, step: int = 100,
               created: str = "2026-12-01T10:00:00+00:00", best: dict | None = None,
               **meta):
    """An experiment folder; with ``parent``, a parent link naming it (and its chain)."""
    from backlm.experiment import folder as xp

    link = None
    if parent is not None:
        parent_path = Path(root) / parent
        prior = xp.Experiment(parent_path).parent_link() or {}
        chain = [*prior.get("chain", []), str(parent_path)]
        link = {"parent_id": parent, "parent_path": str(parent_path),
                "checkpoint": str(parent_path / "checkpoints" / f"step_{step:06d}"),
                "step": step, "weights_sha256": "0" * 64, "parent_phase": "base",
                "parent_direction": "forward", "direction": meta.get("direction", "forward"),
                "tokenizer_sha256": "1" * 64, "chain": chain,
                "chain_ids": [Path(p).name for p in chain], "init_lr_frac": 0.1,
                "created": created}
    metadata = {"id": exp_id, "phase": "base" if parent is None else "sft",
                "direction": "forward", "depth": 4, "status": "finished", "created": created,
                **meta}
    exp = xp.create(root, exp_id, config_yaml="", metadata=metadata, parent_link=link)
    if best is not None:
        exp.write_best("val", best)
    return exp


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """``app`` served by uvicorn in a daemon thread on a pre-bound loopback socket; its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# --- research reports (``backlm report``) -----------------------------------------------------


def fivecat_rows(direction: str, *, good: bool = True) -> list:
    """Judged 5CAT rows of every gate on VAL and OOD (per marker for bidirectional), with
    values that pass (``good``) or a direction margin that fails."""
    from backlm.fivecat.engine import GateRow
    from backlm.fivecat.spec import Thresholds

    th = Thresholds()
    markers = ["forward", "backward"] if direction == "bidirectional" else [None]
    rows = []
    for marker in markers:
        for split in ("val", "ood"):
            where = {"split": split, "marker": marker}
            rows += [GateRow("A", "logp(+1) − max other", value=1.2, op=">=",
                             threshold=th.offset_margin, **where),
                     GateRow("B", "order margin", value=0.3 if good else -0.2, op=">=",
                             threshold=th.direction_margin, **where),
                     GateRow("C", "Δ logp, context shuffled", value=-0.1, op="<=",
                             threshold=-th.context_drop, **where),
                     GateRow("C", "Δ logp, context reversed", value=-0.12, op="<=",
                             threshold=-th.context_drop, **where),
                     GateRow("D", "rollout / teacher-forced", value=0.35, op=">=",
                             threshold=th.rollout_ratio, **where)]
            if marker:
                rows.append(GateRow("B", "marker margin", value=0.08, op=">=",
                                    threshold=th.marker_margin, **where))
        rows.append(GateRow("E", "CE gap per entropy bin", split="val~ood", marker=marker,
                            value=0.2, op="<=", threshold=th.generalisation_gap))
    return rows


def save_fivecat(exp_path: Path, step: int, good: bool = True, judged_as: str | None = None):
    """A 5CAT result file of the experiment at ``step``, written by the real writer."""
    from backlm.experiment.folder import Experiment
    from backlm.fivecat.engine import FivecatResult, save_result
    from backlm.fivecat.spec import load_spec

    exp = Experiment(exp_path)
    meta = exp.metadata()
    direction = judged_as or meta["direction"]
    result = FivecatResult(direction, fivecat_rows(direction, good=good), [], [], {},
                           load_spec(None))
    return save_result(exp.fivecat_path(meta["phase"], step, judged_as), result,
                       {"experiment": exp.id, "step": step, "phase": meta["phase"],
                        "checkpoint_direction": meta["direction"]})


def add_research_rows(exp_path: Path, steps=(2, 4)) -> None:
    """Per-token and statistics rows in a finished run's research log, appended by the real
    writer (the fixtures' runs log them every 50 steps, past their end)."""
    import h5py
    import numpy as np

    from backlm.experiment.folder import Experiment
    from backlm.logs.hdf5 import Hdf5Logger, Schema

    exp = Experiment(exp_path)
    path = exp.research_log()
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        names = {g: tuple(x for x in f[g] if x != "step") for g in ("scalars", "gradients",
                                                                    "activations")}
        rows, seq = f["per_token/loss"].shape[1:]
    schema = Schema(names["scalars"], names["gradients"], names["activations"], rows, seq)
    log = Hdf5Logger(path, schema, attrs, resume_step=max(steps), warn=lambda m: None)
    rng = np.random.default_rng(0)
    for i, step in enumerate(steps):
        level = 5.0 - i
        loss = (level + rng.random((rows, seq))).astype("float16")
        ids = rng.integers(0, 256, (rows, seq)).astype("int32")
        log.add_per_token(step, {"loss": loss, "pred": ids, "input": ids, "target": ids,
                                 "position_loss": loss.mean(0).astype("float32")})
        for group, keys in (("gradients", ("norm", "mean", "std", "max_abs")),
                            ("activations", ("mean", "std", "rms", "max_abs"))):
            log.add_stats(group, step, {n: {k: float(j + 1) / (i + 1) for k in keys}
                                        for j, n in enumerate(names[group])})
    log.close()


def write_samples(exp_path: Path, steps=(2, 4)) -> None:
    """Generation samples of the experiment's latest checkpoint, written as training does."""
    import json as _json

    from backlm.experiment.folder import Experiment
    from backlm.experiment.loading import load_model
    from backlm.logs.samples import generate_samples

    exp = Experiment(exp_path)
    lm = load_model(exp, device="cpu")
    cfg = exp.config()
    cfg.log.sample_tokens = 12
    state = loop_state(exp_path, cfg=cfg, model=lm.model, tokenizer=lm.tokenizer)
    lines = [_json.dumps(r, ensure_ascii=False) for s in steps
             for r in generate_samples(state.run, s)]
    exp.samples_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_report_world(phase_world: Path, serve_exps: Path, root: Path) -> Path:
    """``root/exps``, a copy of the serve world's experiments (``serve_exps``) filled for
    reports; returns it.

    ``b0`` (backward): evaluated in both orders (`backlm eval`, lm), 5CAT at steps 1 (failing)
    and 4 (passing) plus one judged as forward, a note and an issue. ``bi0``
    (bidirectional): evaluated, 5CAT per marker, per-token and statistics rows in its research
    log, generation samples. ``crash``: ``s1`` as a killed run (status running, a torn last
    metrics line, no training summary, no checkpoints; trained with log.hdf5 off, so no
    research log).
    """
    import shutil

    from backlm.experiment.folder import Experiment
    from backlm.experiment.notes import add_note

    exps = copy_experiments(serve_exps, root / "exps")
    with pytest.MonkeyPatch.context() as mp:
        use_world(mp, phase_world, exps)
        for exp_id in ("b0", "bi0"):
            res = run_cli(["eval", exp_id, "--tasks", "lm", "--lm-tokens", "256"])
            assert res.exit_code == 0, res.output
    save_fivecat(exps / "b0", 1, good=False)
    save_fivecat(exps / "b0", 4)
    save_fivecat(exps / "b0", 4, good=False, judged_as="forward")
    save_fivecat(exps / "bi0", 4)
    add_note(Experiment(exps / "b0"), "loss | fell fast")
    add_note(Experiment(exps / "b0"), "eval on OOD pending", issue=True)
    add_research_rows(exps / "bi0")
    write_samples(exps / "bi0")
    crash = Experiment(shutil.copytree(exps / "s1", exps / "crash"))
    crash.update_metadata(id="crash", status="running", finished=None, pid=2 ** 22 + 7)
    crash.summary_path.unlink()
    shutil.rmtree(crash.checkpoints)
    for log in crash.research_logs():
        log.unlink()
    crash.config_path.write_text(crash.config_path.read_text().replace("hdf5: true",
                                                                       "hdf5: false"))
    with open(crash.metrics_path, "a", encoding="utf-8") as f:
        f.write('{"step": 3, "loss": 5.1, "lr_m')
    return exps


def png_data(path: Path) -> dict[str, float]:
    """What a PNG shows: how many colours, the share of pixels that are not the background
    (its most common colour), and how many pixels have matplotlib's first series colour
    (C0, #1f77b4): a plotted line or marker, not just axes."""
    import matplotlib.image as mpimg
    import numpy as np

    rgb = (mpimg.imread(path)[..., :3].reshape(-1, 3) * 255).round().astype(np.int64)
    codes = rgb[:, 0] * 65536 + rgb[:, 1] * 256 + rgb[:, 2]
    _, counts = np.unique(codes, return_counts=True)
    c0 = np.array([0x1F, 0x77, 0xB4])
    return {"colours": len(counts), "foreground": 1 - counts.max() / len(codes),
            "series_pixels": int((np.abs(rgb - c0).max(axis=1) <= 20).sum())}


def assert_png_has_data(path: Path) -> None:
    """The figure is not blank: several colours, some foreground, and a drawn series or a
    heat map's filled cells (a third of the figure or more, in many colours)."""
    seen = png_data(path)
    assert seen["colours"] > 2 and seen["foreground"] > 0.01, (path, seen)
    heat_map = seen["colours"] > 100 and seen["foreground"] > 0.3
    assert seen["series_pixels"] >= 30 or heat_map, (path, seen)


# --- figures: the policy's promises, read off the matplotlib objects ---------------------------


def kept_figures(mp: pytest.MonkeyPatch, module) -> dict[str, Any]:
    """Record every Figure ``module`` saves (file name -> Figure), still writing the PNG."""
    from backlm import render

    kept: dict[str, Any] = {}

    def save(fig, path):
        render.save(fig, path)
        kept[path.name] = fig

    mp.setattr(module, "save", save)
    return kept


def tick_labels(axis) -> list[tuple[str, Any]]:
    """The shown major tick labels of a drawn axis with their boxes on the canvas."""
    low, high = sorted(axis.get_view_interval())
    at = 0 if axis.axis_name == "x" else 1
    return [(label.get_text(), label.get_window_extent()) for label in axis.get_ticklabels()
            if label.get_visible() and label.get_text()
            and low <= label.get_position()[at] <= high]


def assert_readable(fig) -> None:
    """Every visible axes of ``fig`` has a y label, and its x tick labels do not touch."""
    fig.canvas.draw()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        assert ax.get_ylabel().strip(), f"no y label on {ax.get_title()!r}"
        boxes = sorted((b for _t, b in tick_labels(ax.xaxis)), key=lambda b: b.x0)
        for a, b in zip(boxes, boxes[1:], strict=False):
            assert a.x1 < b.x0, f"x tick labels touch on {ax.get_title()!r}"


def fail_optimizer_write(monkeypatch) -> None:
    """A full disk at the checkpoint's optimizer file (the weights file is written first)."""
    import errno

    from backlm.experiment import checkpoint as ckpt
    from backlm.experiment import weights

    real = weights.write

    def full(path, *args, **kw):
        if str(path).endswith(ckpt.OPTIM_FILE):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kw)

    monkeypatch.setattr(weights, "write", full)
