"""Fail-safe by construction: every command, driven with generated bad inputs (wrong types,
out-of-range values, bad paths, corrupted experiment files), must refuse them the same way:
exit code 2, exactly one line (``error: …``), no traceback, and the experiments tree, the
working folder and ``BACKLM_HOME`` byte-identical afterwards.

One module-scoped world is built once (a tiny dataset and tokenizer, a finished 8-step
experiment ``good`` and one interrupted after step 2, ``part``) and put back from a pristine
copy after any case that changed it, so a command that wrongly writes cannot disturb the next
case. Cases run in this process through Typer's ``CliRunner`` under a memory cap and a
deadline, so an absurd size or a hang is reported as a failure instead of taking the machine
down (what may block inside HDF5's C code runs as a real process, killed on time). A few cases
run the real process to check its real stderr; the cases that train on purpose are slow.

A failure's message starts with one ``BADINPUT | …`` line: what was wrong, the exit code,
the exception and where it was raised, the output's line count, first and last line, and
what changed on disk (a new experiment folder with its status).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import gc
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import traceback
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from backlm import config as config_module
from backlm.cli import app
from tests.conftest import make_docs
from tests.helpers import TINY, serve_shards, tiny_args

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="cuda is a valid device here")
FAULT_VARIABLES = ("BACKLM_KILL_AT_STEP", "BACKLM_INTERRUPT_AT_STEP", "BACKLM_NAN_AT_STEP")
MEMORY_HEADROOM = 3 << 29  # an absurd model size must fail to allocate, not swap the machine
DEADLINE_S = 60.0  # a command still running after this is reported as hanging
UNWRITABLE = "/proc/backlm-bad-inputs"  # root writes anywhere else; /proc refuses everyone


# --- the world: data, tokenizers and two trained experiments, built once ---------------------


@dataclass
class World:
    root: Path
    home: Path  # BACKLM_HOME with the "tiny" dataset (read by the experiments' data_dir)
    exps: Path  # good (finished at step 8) and part (interrupted after step 2)
    tokenizers: Path  # smaller/ (280 ids) and larger/ (390 ids) than the dataset's 300
    clean: dict[str, str] = field(default_factory=dict)  # snapshot of home and exps as built

    @property
    def pristine(self) -> Path:
        return self.root / "pristine"

    def freeze(self) -> None:
        """Keep a pristine copy of home and exps, to put back after a case changed them."""
        for live in (self.home, self.exps):
            shutil.copytree(live, self.pristine / live.name, symlinks=True)
        self.clean = snapshot(self.home, self.exps)

    def restore(self) -> None:
        """Put home and exps back as built, if anything changed them."""
        if snapshot(self.home, self.exps) == self.clean:
            return
        for live in (self.home, self.exps):
            shutil.rmtree(live, ignore_errors=True)
            shutil.copytree(self.pristine / live.name, live, symlinks=True)
        assert snapshot(self.home, self.exps) == self.clean


def base_env(home: Path, exps: Path) -> dict[str, str | None]:
    """What every case runs with: its own folders, wandb never online, no fault injection."""
    env: dict[str, str | None] = {"BACKLM_HOME": str(home), "BACKLM_EXPERIMENTS": str(exps),
                                  "WANDB_MODE": "offline", "WANDB_API_KEY": None}
    env.update(dict.fromkeys(FAULT_VARIABLES))
    return env


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread while this module runs: on a shared, busy CPU the tiny models run
    up to 30× slower with two spinning threads than with one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread) -> World:
    from backlm.data.shards import write_shard
    from backlm.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("bad_inputs")
    w = World(root, root / "home", root / "exps", root / "tokenizers")
    data = w.home / "data" / "tiny"
    docs = make_docs(400)
    # As the `home` fixture (tests/conftest.py), plus a few long documents in val and ood so
    # that 5CAT finds windows to probe and reaches its model (else every 5CAT case would be
    # refused for "too little text" and prove nothing).
    long_docs = [" ".join(docs[360 + i:370 + i]) for i in range(0, 30, 3)]
    write_shard(data / "train_00000.parquet", docs[:360], row_group_docs=40)
    write_shard(data / "val_00000.parquet", docs[360:] + long_docs, row_group_docs=40)
    write_shard(data / "ood_00000.parquet", long_docs[::-1])
    Tokenizer.train(docs, vocab_size=300).save(data / "tokenizer")
    Tokenizer.train(docs, vocab_size=280).save(w.tokenizers / "smaller")
    Tokenizer.train(docs, vocab_size=400).save(w.tokenizers / "larger")
    with _cwd(root):
        env = base_env(w.home, w.exps)
        good = CliRunner().invoke(app, tiny_args("--id", "good"), env=env)
        assert good.exit_code == 0, good.output
        part = CliRunner().invoke(app, tiny_args("--id", "part"),
                                  env={**env, "BACKLM_INTERRUPT_AT_STEP": "2"})
        assert part.exit_code == 130, part.output
    w.freeze()
    return w


@contextlib.contextmanager
def _cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@dataclass
class Case:
    """The world as one case sees it, and the (empty) folder it runs from."""

    dir: Path
    home: Path
    exps: Path
    cwd: Path  # the working folder: relative paths land here, so it is watched too
    world: World
    env: dict[str, str | None] = field(default_factory=dict)

    def exp(self, name: str = "good") -> Path:
        return self.exps / name

    def roots(self) -> tuple[Path, ...]:
        """Everything a bad command must leave as it was."""
        return (self.home, self.exps, self.cwd)

    def file(self, name: str, content: str | bytes = "") -> Path:
        path = self.cwd / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path


@pytest.fixture
def case(world, tmp_path, monkeypatch):
    world.restore()
    c = Case(tmp_path, world.home, world.exps, tmp_path / "cwd", world)
    c.cwd.mkdir()
    c.env = base_env(c.home, c.exps)
    monkeypatch.chdir(c.cwd)
    yield c
    world.restore()


# --- running a command and judging the result ------------------------------------------------


class Deadline(BaseException):
    """Raised in the command when it runs past DEADLINE_S (a BaseException, so that no
    ``except Exception`` in the engine mistakes it for its own error)."""


@dataclass
class Outcome:
    args: list[str]
    code: int | None
    output: str  # stdout and stderr, as the user sees them
    stdout: str = ""
    stderr: str = ""
    error: str = ""  # an exception other than SystemExit: type, message, where
    timed_out: bool = False

    @property
    def lines(self) -> list[str]:
        return [x for x in self.output.splitlines() if x.strip()]


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _on_deadline(signum, frame):
    raise Deadline


def _describe(exc: BaseException, tb) -> str:
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if "/backlm/" in f.filename] or frames
    where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno} in {ours[-1].name}" \
        if ours else ""
    message = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {message}{where}"


def invoke(args: list[str], env: dict[str, str | None],
           deadline: float = DEADLINE_S) -> Outcome:
    """Run ``backlm *args`` in this process, capped in memory and time."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_bytes() + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    previous = signal.signal(signal.SIGALRM, _on_deadline)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.setitimer(signal.ITIMER_REAL, deadline)
    try:
        res = CliRunner().invoke(app, args, env=env)
    except Deadline:
        return Outcome(args, None, "", error=f"still running after {deadline:.0f} s",
                       timed_out=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    out = Outcome(args, res.exit_code, res.output, res.stdout, res.stderr)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        _, exc, tb = res.exc_info
        out.error = _describe(exc, tb)
        traceback.clear_frames(tb)  # the frames may hold a huge half-built model
        res.exc_info = None
        res.exception = None
        del exc, tb, res
        gc.collect()
    return out


_HASHES: dict[tuple[int, ...], str] = {}


def _sha(path: Path) -> str:
    """sha256 of a file, cached by inode, size, mtime and ctime: a file whose stat is
    unchanged has not been written (ctime cannot be set back), so it is hashed once."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def snapshot(*roots: Path) -> dict[str, str]:
    """``{path: sha256 | "dir" | "link:…" | "absent"}`` of every file below ``roots``."""
    out: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if not os.path.lexists(root):
            out[str(root)] = "absent"
        elif root.is_file():
            out[str(root)] = _sha(root)
        else:
            for dirpath, dirnames, filenames in os.walk(root):
                out[dirpath] = "dir"
                for name in dirnames + filenames:
                    p = Path(dirpath) / name
                    if p.is_symlink():
                        out[str(p)] = f"link:{os.readlink(p)}"
                    elif name in filenames:
                        out[str(p)] = _sha(p)
    return out


def disk_changes(before: dict[str, str], after: dict[str, str], *bases: Path) -> str:
    """What changed, short: ``+new`` ``-gone`` ``~modified`` (new experiment folders with
    the status their metadata gives)."""
    def rel(p: str) -> str:
        for base in bases:
            with contextlib.suppress(ValueError):
                return str(Path(p).relative_to(base))
        return p

    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    parts = []
    for p in added:
        meta = Path(p) / "metadata.json"
        if after[p] == "dir" and meta.is_file():
            with contextlib.suppress(ValueError, OSError):
                parts.append(f"+{rel(p)}/ (experiment, status "
                             f"{json.loads(meta.read_text()).get('status')!r})")
    shown = [f"+{rel(p)}" for p in added][:6] + [f"-{rel(p)}" for p in removed][:4] + \
        [f"~{rel(p)}" for p in changed][:6]
    if not (added or removed or changed):
        return ""
    counts = f"[{len(added)} added, {len(removed)} removed, {len(changed)} changed]"
    return " ".join([counts, *parts, *shown])


def _clip(text: str, n: int = 150) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "…"


def report(out: Outcome, problems: list[str], diff: str = "") -> str:
    """The failure message: one BADINPUT line a report can be built from, then details."""
    lines = out.lines
    noise = {"--set", *TINY, "train.max_steps=1", "train.max_steps=2"}
    shown = [a for a in out.args if a not in noise]  # the tiny model's settings
    head = (f"BADINPUT | {' ; '.join(problems)} | exit={out.code} | exc={out.error or '-'} | "
            f"lines={len(lines)} | first={_clip(lines[0]) if lines else '-'} | "
            f"last={_clip(lines[-1]) if len(lines) > 1 else '-'} | disk={diff or '-'}")
    return f"{head}\n  args: {shown}\n  output:\n{out.output[-3000:]}"


def run_process(args: list[str], env: dict[str, str | None], cwd: Path,
                timeout: float = DEADLINE_S) -> Outcome:
    """Run ``python -m backlm.cli *args`` for real (killed after ``timeout``)."""
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    full["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    try:
        proc = subprocess.run([sys.executable, "-m", "backlm.cli", *args], env=full, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Outcome(args, None, "", error=f"still running after {timeout:.0f} s",
                       timed_out=True)
    out = Outcome(args, proc.returncode, proc.stdout + proc.stderr, proc.stdout, proc.stderr)
    if "Traceback" in proc.stderr:
        last = [x for x in proc.stderr.splitlines() if x.strip()][-1]
        out.error = f"{_clip(last, 160)} (traceback on stderr)"
    return out


def check_refused(case: Case, args: list[str], *, needles: tuple[str, ...] = (),
                  forbid: tuple[str, ...] = (), env: dict | None = None,
                  extra_roots: tuple[Path, ...] = (), process: bool = False) -> Outcome:
    """Run a bad command and assert the contract: exit 2, one ``error:`` line, no traceback,
    nothing changed on disk; ``needles`` (regexes) must be in the message, ``forbid`` not.
    ``process``: run it as a real process (for what may block inside C code, where no
    Python signal reaches it)."""
    roots = (*case.roots(), *extra_roots)
    before = snapshot(*roots)
    env = {**case.env, **(env or {})}
    out = run_process(args, env, case.cwd, 60) if process else invoke(args, env)
    diff = disk_changes(before, snapshot(*roots), case.world.root, case.dir)
    problems = judge(out, needles, forbid)
    if diff:
        problems.append("disk changed")
    assert not problems, report(out, problems, diff)
    return out


def judge(out: Outcome, needles=(), forbid=()) -> list[str]:
    problems = []
    if out.timed_out:
        return ["hangs"]
    if out.error:
        problems.append("crashes")
    elif out.code != 2:
        problems.append(f"exit {out.code}")
    if "Traceback" in out.output:
        problems.append("traceback")
    if len(out.lines) != 1:
        problems.append(f"{len(out.lines)} lines")
    elif not out.lines[0].startswith("error:"):
        problems.append("not an error: line")
    if out.code == 2:
        problems += [f"message lacks /{rx}/" for rx in needles
                     if not re.search(rx, out.output, re.IGNORECASE)]
        problems += [f"message says /{rx}/" for rx in forbid
                     if re.search(rx, out.output, re.IGNORECASE)]
    return problems


def bad_train(*extra: str, steps: int = 1, exp_id: str = "bad") -> list[str]:
    """A tiny training command as the tests train them, plus the bad part; one step, so that
    a value nobody refuses costs a second, not a run. The step count is a --set, not the
    --max-steps flag, which would win over a bad ``--set train.max_steps``."""
    args = ["train", f"--id={exp_id}"]
    for item in (*TINY, f"train.max_steps={steps}"):
        args += ["--set", item]
    return [*args, *extra]


# --- config values: generated from the dataclasses --------------------------------------------

HINTS = typing.get_type_hints(config_module.RunConfig)
# Free text or paths: any string is a fine value, so a "wrong type" is not clearly wrong.
FREE_TEXT = {"description", "id", "log.wandb_project", "fivecat.spec", "data.dataset"}


def config_keys() -> dict[str, typing.Any]:
    """Every leaf key of RunConfig (``model.depth`` …) with its type."""
    keys: dict[str, typing.Any] = {}
    for name, tp in HINTS.items():
        if dataclasses.is_dataclass(tp):
            for sub, stp in typing.get_type_hints(tp).items():
                keys[f"{name}.{sub}"] = stp
        else:
            keys[name] = tp
    return keys


def _kind(tp) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is tuple:
        return "tuple"
    if args and typing.get_origin(tp) is not tuple:
        return _kind(args[0])
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "str"  # a typed name (the direction) is written as its name
    return {int: "int", float: "float", bool: "bool", str: "str"}[tp]


# One wrong type per key (the type check is one function: every key gets one, and each wrong
# shape is tried on one key of each type below).
WRONG_TYPE = {"int": "abc", "float": "abc", "bool": "abc", "str": "[1]", "tuple": "abc"}
WRONG_SHAPES = {"int": ("[1]", "{a: 1}", "1.5", "true"), "float": ("[1]", "{a: 1}", "true"),
                "bool": ("[1]", "{a: 1}", "2"), "str": ("{a: 1}",), "tuple": ("{a: 1}", "3")}
SHAPE_KEYS = {"int": "model.depth", "float": "optim.matrix_lr", "bool": "train.compile",
              "str": "train.device", "tuple": "optim.adam_betas"}


def type_cases():
    keys = config_keys()
    for key, tp in keys.items():
        if key in FREE_TEXT:
            continue
        kind = _kind(tp)
        yield pytest.param(key, WRONG_TYPE[kind], (), id=f"type:{key}={WRONG_TYPE[kind]}")
    for kind, key in SHAPE_KEYS.items():
        for value in WRONG_SHAPES[kind]:
            yield pytest.param(key, value, (), id=f"shape:{key}={value}")


ES_ON = ("--set", "early_stop.enabled=true")
FIVECAT_ON = ("--set", "fivecat.every=4")
BIDI = ("--direction", "bidirectional")
NAN, INF = ".nan", ".inf"  # YAML's NaN and infinity (plain "nan" is the string "nan")
LRS = ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr")

# Values a researcher would agree are wrong, key by key; the tuple adds what makes the key
# matter (early stopping on, a bidirectional run …), so the value alone is at fault.
RANGE_BAD: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "data.direction": (("sideways", ""), ()),
    "data.dataset": (("nosuch", "../x", "", "a b"), ()),
    "data.mix": (("-0.1", "1.5", NAN, INF), BIDI),
    "data.tokenizer_threads": (("0", "-1"), ()),
    "data.docs_per_batch": (("0", "-1"), ()),
    "data.buffer_docs": (("0", "-1"), ()),
    "model.depth": (("0", "-1", "100000", "1000000000000"), ()),
    "model.width": (("-1", "48", "1000000000000"), ()),  # 48: not a multiple of head_dim 32
    "model.head_dim": (("0", "-1"), ()),
    "model.vocab_size": (("0", "-1"), ()),
    "model.seq_len": (("0", "-1"), ()),
    "model.softcap": (("-1", NAN), ()),
    "model.rope_base": (("0", "-1", NAN, INF), ()),
    **{f"optim.{lr}": (("-0.1", NAN, INF), ()) for lr in LRS},
    "optim.weight_decay": (("-0.1", NAN), ()),
    "optim.adam_betas": (("[0.9]", "[0.9, 0.95, 0.99]", "[1.5, 0.95]", "[-0.1, 0.95]",
                          "[0.9, .nan]", "[a, b]"), ()),
    "optim.muon_momentum": (("-0.1", "1.5", NAN), ()),
    "optim.warmup_steps": (("-1",), ()),
    "optim.warmdown_frac": (("-0.1", "1.5", NAN), ()),
    "optim.final_lr_frac": (("-0.1", NAN), ()),
    "optim.grad_clip": (("-1", NAN), ()),
    "optim.ns_steps": (("-1",), ()),
    "optim.muon_momentum_warmup_steps": (("-1",), ()),
    "optim.muon_momentum_start": (("-0.1", "1.5", NAN), ()),
    "train.max_steps": (("0", "-1"), ()),
    "train.total_batch_tokens": (("0", "-1", "100"), ()),
    "train.device_batch_size": (("0", "-1"), ()),
    "train.eval_every": (("0", "-1"), ()),
    "train.eval_tokens": (("-1",), ()),
    "train.save_every": (("0", "-1"), ()),
    "train.log_every": (("0", "-1"), ()),
    "train.device": (("tpu", "gpu", ""), ()),
    "train.dtype": (("fp16", "float8", ""), ()),
    "log.wandb": (("sometimes", ""), ()),
    **{f"log.{k}": (("-1",), ()) for k in ("per_token_every", "per_token_rows", "stats_every",
                                            "attention_every", "sample_every", "sample_tokens")},
    "log.flush_every": (("0", "-1"), ()),
    "log.sample_temperature": (("-1", NAN), ()),
    "log.print_every": (("-1",), ()),
    "log.print_seconds": (("-1", NAN), ()),
    "fivecat.every": (("-1",), ()),
    "fivecat.max_samples": (("0", "-1"), FIVECAT_ON),  # its message may name the 5cat flag
    "fivecat.spec": (("nope/x.yaml",), FIVECAT_ON),
    "early_stop.monitor": (("nosuch_metric", ""), ES_ON),
    "early_stop.mode": (("sideways", ""), ES_ON),
    "early_stop.patience": (("-1",), ES_ON),
    "early_stop.min_delta": ((NAN,), ES_ON),
    "early_stop.stopping_threshold": ((NAN,), ES_ON),
    "early_stop.divergence_threshold": ((NAN,), ES_ON),
    "cost.gpu": (("nosuchgpu", ""), ()),
    "cost.usd_per_gpu_hour": (("-1", NAN, INF), ()),
    "cost.assumed_mfu": (("0", "-0.1", "1.5", NAN), ()),
    "phase": (("sideways", "sft"), ()),  # sft branches from a parent
    "optim.init_lr_frac": (("0", "-1", "11", NAN), ()),
    "chat.train_on": (("nobody",), ()),
    "chat.text_frac": (("-0.1", "1.5", NAN), ()),
    "rl.prompts_per_step": (("0",), ()),
    "rl.group_size": (("1", "0"), ()),
    "rl.max_new_tokens": (("0",), ()),
    "rl.temperature": (("0", "-1", NAN), ()),
    "rl.kl_coef": (("-1", NAN), ()),
    "rl.eval_prompts": (("0",), ()),
}


def range_cases():
    keys = config_keys()
    for key, (values, context) in RANGE_BAD.items():
        assert key in keys, key  # the table follows the dataclasses
        for value in values:
            yield pytest.param(key, value, context, id=f"{key}={value}")
    yield pytest.param("model.head_dim", "33", ("--set", "model.width=66"),
                       id="model.head_dim=33(odd: rotary needs pairs)")
    yield pytest.param("train.device", "cuda", (), id="train.device=cuda(no GPU)",
                       marks=NO_CUDA)
    # Settings the run would silently replace or ignore must be refused, not dropped.
    yield pytest.param("model.vocab_size", "500", (), id="model.vocab_size=500(tokenizer: 300)")
    yield pytest.param("data.mix", "0.3", (), id="data.mix=0.3(forward run ignores it)")


ANY_NUMBER = {"train.seed"}  # numeric keys for which no value is out of range


def test_every_numeric_config_key_has_out_of_range_cases():
    """A key added to the dataclasses must be added to RANGE_BAD (or ANY_NUMBER)."""
    numeric = {k for k, tp in config_keys().items() if _kind(tp) in ("int", "float", "tuple")}
    assert numeric - set(RANGE_BAD) - ANY_NUMBER == set()


@pytest.mark.parametrize("key,value,context", [*type_cases(), *range_cases()])
def test_train_refuses_bad_config_values(case, key, value, context):
    leaf = key.split(".")[-1].replace("_", "[_-]")
    check_refused(case, bad_train(*context, "--set", f"{key}={value}"), needles=(leaf,))


@pytest.mark.parametrize("key,value", [("model.depth", "0"), ("train.eval_every", "0"),
                                       ("model.head_dim", "0"), ("optim.matrix_lr", "-0.1")])
def test_estimate_only_refuses_what_train_refuses(case, key, value):
    check_refused(case, bad_train("--estimate-only", "--set", f"{key}={value}"),
                  needles=(key.split(".")[-1],))


def _p(value, needle: str):
    """A case named after its value (a tuple of arguments: joined by spaces)."""
    name = " ".join(value) if isinstance(value, tuple) else value
    return pytest.param(value, needle, id=name or "''")


@pytest.mark.parametrize("override,needle", [
    _p("model=3", "model"), _p("nosuch.key=1", "nosuch"), _p("=3", "set"),
    _p("model.depth", "set"), _p("model.depth.x=1", "depth"), _p(".depth=1", "depth"),
    _p("model..depth=1", "depth"), _p("data=[1]", "data"), _p("nosuch=1", "nosuch"),
])
def test_train_refuses_malformed_overrides(case, override, needle):
    check_refused(case, bad_train("--set", override), needles=(needle,))


@pytest.mark.parametrize("flags,needle", [
    _p(("--depth", "0"), "depth"), _p(("--depth", "-1"), "depth"),
    _p(("--max-steps", "0"), "max.steps"), _p(("--max-steps", "-1"), "max.steps"),
    _p(("--direction", "sideways"), "direction"), _p(("--direction", ""), "direction"),
    _p(("--device", "tpu"), "device|tpu"), _p(("--device", ""), "device"),
    _p(("--wandb", "sometimes"), "wandb"),
    _p(("--nproc-per-node", "0"), "nproc"), _p(("--nproc-per-node", "-1"), "nproc"),
    _p(("--nnodes", "0"), "nnodes"), _p(("--node-rank", "1"), "node.rank"),
    _p(("--node-rank", "-1"), "node.rank"),
])
def test_train_refuses_bad_flags(case, flags, needle):
    check_refused(case, bad_train(*flags), needles=(needle,))


# --- paths: --config, --id, --experiments-dir, BACKLM_HOME -------------------------------------

CONFIG_FILES = {
    "syntax-error": ("model:\n  depth: [1, 2\n", (r"line \d+", r"column \d+")),
    "a-list": ("- 1\n- 2\n", ("mapping",)),
    "model-scalar": ("model: 3\n", ("model",)),
    "unknown-key": ("model:\n  nosuch: 1\n", ("nosuch",)),
    "unknown-section": ("nosuch: 1\n", ("nosuch",)),
    "binary": (b"\x00\xff\xfe\x00garbage", ("x.yaml",)),
}


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_train_refuses_bad_config_files(case, name):
    content, needles = CONFIG_FILES[name]
    path = case.file("x.yaml", content)
    check_refused(case, bad_train("--config", str(path)), needles=needles)


def test_train_config_that_does_not_exist_says_so(case):
    check_refused(case, bad_train("--config", "nope/x.yaml"),
                  needles=("nope/x.yaml", "does not exist|not found|no such file"),
                  forbid=("unknown config preset",))


def test_train_config_that_is_a_folder_says_so(case):
    (case.cwd / "adir").mkdir()
    check_refused(case, bad_train("--config", "adir"), needles=("adir", "folder|directory"))


@pytest.mark.parametrize("exp_id,needles,forbid", [
    ("x" * 200, ("too long",), ("letters, digits",)),
    ("../x", ("id",), ()), ("", ("id",), ()), (".hidden", ("id",), ()),
    ("a b", ("id",), ()), ("a/b", ("id",), ()), ("-x", ("id",), ()),
], ids=["200-chars", "dotdot", "empty", "hidden", "space", "slash", "dash"])
def test_train_refuses_bad_ids(case, exp_id, needles, forbid):
    check_refused(case, bad_train(exp_id=exp_id), needles=needles, forbid=forbid)


def _dir_cases():
    return [pytest.param("afile", id="a-file"), pytest.param("afile/sub", id="under-a-file"),
            pytest.param(UNWRITABLE, id="unwritable")]


@pytest.mark.parametrize("where", _dir_cases())
def test_train_refuses_bad_experiments_dir(case, where):
    case.file("afile", "not a folder")
    check_refused(case, bad_train("--experiments-dir", where), needles=("experiments",))


@pytest.mark.parametrize("command", [["eval", "good"], ["5cat", "good"], ["log", "good"],
                                     ["note", "good", "hello"], ["ls"]],
                         ids=lambda c: c[0])
@pytest.mark.parametrize("where", _dir_cases()[:2])
def test_commands_refuse_an_experiments_dir_that_is_not_a_folder(case, command, where):
    case.file("afile", "not a folder")
    check_refused(case, [*command, "--experiments-dir", where], needles=("afile",))


HOME_COMMANDS = {
    "train": lambda c: bad_train(),
    "data-prepare": lambda c: ["data", "prepare", "--dataset", "fresh", "--vocab-size", "300"],
    "data-import": lambda c: ["data", "import", str(c.file("in.txt", "one document\n"))],
    "data-diagnose": lambda c: ["data", "diagnose", "--dataset", "tiny"],
}


@pytest.mark.parametrize("home", ["afile", "afile/sub", UNWRITABLE],
                         ids=["a-file", "under-a-file", "unwritable"])
@pytest.mark.parametrize("command", HOME_COMMANDS)
def test_commands_refuse_a_backlm_home_they_cannot_use(case, command, home):
    case.file("afile", "not a folder")
    check_refused(case, HOME_COMMANDS[command](case), env={"BACKLM_HOME": home},
                  needles=("afile|proc",))


@pytest.mark.parametrize("home", ["afile", UNWRITABLE], ids=["a-file", "unwritable"])
def test_download_refuses_a_backlm_home_it_cannot_write(case, server, home):
    serve_shards(case.dir, server, 2)
    case.file("afile", "not a folder")
    check_refused(case, ["data", "download", "fineweb-edu", "--shards", "2",
                         "--base-url", server.url],
                  env={"BACKLM_HOME": home}, needles=("afile|proc",))


@pytest.mark.parametrize("home", ["afile", UNWRITABLE], ids=["a-file", "unwritable"])
def test_download_task_refuses_a_backlm_home_it_cannot_write(case, mirror, home):
    case.file("afile", "not a folder")
    check_refused(case, ["data", "download", "--task", "arc", "--base-url", mirror],
                  env={"BACKLM_HOME": home}, needles=("afile|proc",))


# --- corrupted experiment files ----------------------------------------------------------------


def _checkpoints(exp: Path) -> list[Path]:
    return sorted(p for p in (exp / "checkpoints").glob("step_*") if p.is_dir())


def _edit_meta(edit):
    def apply(case: Case, exp: Path) -> None:
        for ck in _checkpoints(exp):
            path = ck / "meta.json"
            result = edit(json.loads(path.read_text()))
            path.write_text(result if isinstance(result, str) else json.dumps(result))
    return apply


def _without(key):
    return lambda meta: {k: v for k, v in meta.items() if k != key}


def _with(key, value):
    return lambda meta: {**meta, key: value}


def _every_checkpoint(name: str, make):
    def apply(case: Case, exp: Path) -> None:
        for ck in _checkpoints(exp):
            path = ck / name
            path.write_bytes(make(path.read_bytes()))
    return apply


def _write(name: str, content: str):
    def apply(case: Case, exp: Path) -> None:
        (exp / name).write_text(content)
    return apply


def _other_shape(case: Case, exp: Path) -> None:
    path = exp / "config.yaml"
    path.write_text(path.read_text().replace("depth: 2", "depth: 3"))


def _swap_tokenizer(which: str | None):
    def apply(case: Case, exp: Path) -> None:
        shutil.rmtree(exp / "tokenizer")
        if which:
            shutil.copytree(case.world.tokenizers / which, exp / "tokenizer")
    return apply


def _remove(name: str):
    def apply(case: Case, exp: Path) -> None:
        (exp / name).unlink()
    return apply


def _h5(edit):
    def apply(case: Case, exp: Path) -> None:
        path = exp / "base.h5"
        if edit is None:
            path.unlink()
        else:
            path.write_bytes(edit(path.read_bytes()))
    return apply


def _garbage(data: bytes) -> bytes:
    return bytes((i * 131 + 7) % 256 for i in range(len(data)))


RESUME, EVAL, FIVECAT, LOG, NOTE = "resume", "eval", "5cat", "log", "note"
LOADS_MODEL = (RESUME, EVAL, FIVECAT)
# name: (corruption, commands that must refuse it, what the message must name)
CORRUPTIONS = {
    **{f"meta-without-{k}": (_edit_meta(_without(k)), LOADS_MODEL, "meta.json")
       for k in ("step", "direction", "model_config")},
    # resume also needs the loaders' positions, the RNG state and the token count
    **{f"meta-without-{k}": (_edit_meta(_without(k)), (RESUME,), "meta.json")
       for k in ("loaders", "rng", "tokens")},
    "meta-direction-sideways": (_edit_meta(_with("direction", "sideways")), LOADS_MODEL,
                                "meta.json|sideways"),
    "meta-step-not-a-number": (_edit_meta(_with("step", "x")), LOADS_MODEL, "meta.json"),
    "meta-model_config-not-an-object": (_edit_meta(_with("model_config", 3)), LOADS_MODEL,
                                        "meta.json"),
    "meta-not-an-object": (_edit_meta(lambda m: "[1, 2]"), LOADS_MODEL, "meta.json"),
    "meta-not-json": (_edit_meta(lambda m: "{oops"), LOADS_MODEL, "meta.json"),
    "meta-empty": (_edit_meta(lambda m: ""), LOADS_MODEL, "meta.json"),
    "weights-truncated": (_every_checkpoint("model.safetensors", lambda b: b[:len(b) // 2]),
                          LOADS_MODEL, "model.safetensors"),
    "weights-garbage": (_every_checkpoint("model.safetensors", _garbage), LOADS_MODEL,
                        "model.safetensors"),
    "optim-json-corrupt": (_every_checkpoint("optim.json", lambda b: b"{oops"), (RESUME,),
                           "optim"),
    "optim-tensors-garbage": (_every_checkpoint("optim.safetensors", _garbage), (RESUME,),
                              "optim"),
    "config-other-shape": (_other_shape, (RESUME,), "config.yaml"),
    "config-invalid-yaml": (_write("config.yaml", "model: [1\n"), (RESUME,), "config.yaml"),
    "config-missing": (_remove("config.yaml"), (RESUME,), "config.yaml"),
    "metadata-corrupt": (_write("metadata.json", "{oops"), (*LOADS_MODEL, LOG, NOTE),
                         "metadata.json"),
    "metadata-not-an-object": (_write("metadata.json", "[1]"), (*LOADS_MODEL, LOG, NOTE),
                               "metadata.json"),
    "tokenizer-smaller": (_swap_tokenizer("smaller"), LOADS_MODEL, "tokenizer"),
    "tokenizer-larger": (_swap_tokenizer("larger"), LOADS_MODEL, "tokenizer"),
    "tokenizer-missing": (_swap_tokenizer(None), LOADS_MODEL, "tokenizer"),
    "tokenizer-corrupt": (lambda c, e: (e / "tokenizer" / "backlm_tokenizer.json").write_text("{oops"),
                          LOADS_MODEL, "tokenizer"),
    "log-garbage": (_h5(_garbage), (LOG,), r"\.h5"),
    "log-truncated": (_h5(lambda b: b[:len(b) // 3]), (LOG,), r"\.h5"),
    "log-missing": (_h5(None), (LOG,), r"\.h5"),
}

COMMANDS = {
    RESUME: (["train", "--resume", "part"], "part"),  # an unfinished run: resume must load it
    EVAL: (["eval", "good"], "good"),
    FIVECAT: (["5cat", "good", "--max-samples", "4"], "good"),
    LOG: (["log", "good"], "good"),
    NOTE: (["note", "good", "a note"], "good"),
}


def corruption_cases():
    for name, (_, commands, needle) in CORRUPTIONS.items():
        for command in commands:
            yield pytest.param(command, name, needle, id=f"{command}:{name}")


@pytest.mark.parametrize("command,corruption,needle", list(corruption_cases()))
def test_commands_refuse_corrupted_experiment_files(case, command, corruption, needle):
    args, target = COMMANDS[command]
    CORRUPTIONS[corruption][0](case, case.exp(target))
    # h5py may retry a damaged research log inside HDF5 for minutes: a real process, killed
    check_refused(case, args, needles=(needle,), process=command == LOG)


# --- resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [
    ("--wandb", "offline"), ("--device", "cuda"), ("--seed", "3"), ("--depth", "3"),
    ("--set", "x=1"), ("--set", "model.depth=3"), ("--config", "cpu-tiny"),
    ("--direction", "backward"), ("--id", "other"), ("--stop-on-inversion",),
    ("--estimate-only",),
], ids=lambda v: " ".join(v))
def test_resume_refuses_training_flags(case, flags):
    check_refused(case, ["train", "--resume", "good", *flags], needles=("resume",))


@pytest.mark.parametrize("ref", ["nosuch", "../good", ""], ids=["unknown", "dotdot", "empty"])
def test_resume_refuses_unknown_experiments(case, ref):
    check_refused(case, ["train", f"--resume={ref}"], needles=("experiment|resume",))


def test_resuming_a_finished_run_says_so_and_touches_nothing(case):
    before = snapshot(*case.roots())
    out = invoke(["train", "--resume", "good"], case.env)
    diff = disk_changes(before, snapshot(*case.roots()), case.world.root, case.dir)
    problems = [] if out.code == 0 and not out.error else [f"exit {out.code}"]
    if "finished" not in out.output.lower():
        problems.append("does not say finished")
    if diff:
        problems.append("disk changed")
    assert not problems, report(out, problems, diff)


@pytest.mark.slow
def test_resume_with_more_steps_extends_a_finished_run(case):
    out = invoke(["train", "--resume", "good", "--max-steps", "12"], case.env)
    assert out.code == 0, report(out, [f"exit {out.code}"])
    exp = case.exp("good")
    assert (exp / "checkpoints" / "step_000012").is_dir()
    steps = [json.loads(x)["step"] for x in (exp / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 12
    assert json.loads((exp / "metadata.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_the_interrupted_run_resumes(case):
    out = invoke(["train", "--resume", "part"], case.env)
    assert out.code == 0, report(out, [f"exit {out.code}"])
    assert (case.exp("part") / "checkpoints" / "step_000008").is_dir()


# --- eval, 5cat, log, note, ls, data --------------------------------------------------------


def _o(*args: str, needle: str = ""):
    return pytest.param(list(args), needle, id=" ".join(a if a else "''" for a in args))


COMMAND_CASES = [
    # eval
    _o("eval", "nosuch", needle="nosuch"),
    _o("eval", "good", "--step", "999", needle="999"),
    _o("eval", "good", "--step", "-1", needle="step"),
    _o("eval", "good", "--tasks", "nosuch", needle="nosuch"),
    _o("eval", "good", "--tasks", "lm,nosuch", needle="nosuch"),
    _o("eval", "good", "--tasks", "", needle="tasks"),
    _o("eval", "good", "--tasks", "arc-easy", needle="download"),
    _o("eval", "good", "--directions", "sideways", needle="sideways"),
    _o("eval", "good", "--directions", "", needle="directions"),
    _o("eval", "good", "--directions", "bidirectional", needle="directions"),
    _o("eval", "good", "--max-per-task", "0", needle="max-per-task"),
    _o("eval", "good", "--max-per-task", "-1", needle="max-per-task"),
    _o("eval", "good", "--lm-tokens", "0", needle="lm-tokens"),
    _o("eval", "good", "--lm-tokens", "-1", needle="lm-tokens"),
    _o("eval", "good", "--max-new-tokens", "0", needle="max-new-tokens"),
    _o("eval", "good", "--device", "tpu", needle="tpu|device"),
    # 5cat
    _o("5cat", "nosuch", needle="nosuch"),
    _o("5cat", "good", "--step", "999", needle="999"),
    _o("5cat", "good", "--step", "-1", needle="step"),
    _o("5cat", "good", "--max-samples", "0", needle="samples"),
    _o("5cat", "good", "--max-samples", "-1", needle="samples"),
    _o("5cat", "good", "--direction", "sideways", needle="sideways"),
    _o("5cat", "good", "--spec", "nope/x.yaml", needle="nope/x.yaml"),
    _o("5cat", "good", "--device", "tpu", needle="tpu|device"),
    # log, note, ls
    _o("log", "nosuch", needle="nosuch"),
    _o("log", "good", "--top", "-1", needle="top"),
    _o("note", "nosuch", "a note", needle="nosuch"),
    _o("note", "good", "", needle="note"),
    _o("note", "good", "   ", needle="note"),
    # data prepare (each would otherwise read the whole Python installation)
    _o("data", "prepare", "--vocab-size", "0", needle="vocab"),
    _o("data", "prepare", "--vocab-size", "-5", needle="vocab"),
    _o("data", "prepare", "--vocab-size", "100", needle="vocab"),
    _o("data", "prepare", "--dataset", "../x", needle="dataset"),
    _o("data", "prepare", "--dataset", "", needle="dataset"),
    _o("data", "prepare", "--dataset", "a b", needle="dataset"),
    # data download (refused before any network)
    _o("data", "download", "nosuch", needle="nosuch"),
    _o("data", "download", "arc", needle="task"),
    _o("data", "download", "--task", "nosuch", needle="nosuch"),
    _o("data", "download", "--task", "", needle="task"),
    _o("data", "download", "--shards", "0", needle="shards"),
    _o("data", "download", "--shards", "-1", needle="shards"),
    _o("data", "download", "--val-shards", "-1", needle="val-shards"),
    _o("data", "download", "--shards", "1", "--val-shards", "1", needle="shards"),
    _o("data", "download", "--workers", "0", needle="workers"),
    _o("data", "download", "--dataset", "../x", needle="dataset"),
    _o("data", "download", "--base-url", "notaurl", needle="url"),
    _o("data", "download", "--base-url", "ftp://example.org/x", needle="url"),
    # data import
    _o("data", "import", "nope.txt", needle="nope.txt"),
    _o("data", "import", "in.txt", "--dataset", "tiny", needle="append"),
    _o("data", "import", "in.txt", "--dataset", "../x", needle="dataset"),
    _o("data", "import", "in.txt", "--val-fraction", "-0.1", needle="val-fraction"),
    _o("data", "import", "in.txt", "--val-fraction", "1.5", needle="val-fraction"),
    _o("data", "import", "in.txt", "--val-fraction", "nan", needle="val-fraction"),
    _o("data", "import", "empty.txt", needle="empty.txt|no text|empty"),
    _o("data", "import", "binary.txt", needle="binary.txt"),
    _o("data", "import", "data.bin", needle="bin|no .txt"),
    _o("data", "import", "emptydir", needle="emptydir"),
    _o("data", "import", "bad.jsonl", needle="bad.jsonl"),
    _o("data", "import", "nofield.jsonl", needle="text"),
    # data diagnose
    _o("data", "diagnose", "--dataset", "tiny", "--direction", "sideways", needle="sideways"),
    _o("data", "diagnose", "--dataset", "nosuch", needle="nosuch"),
    _o("data", "diagnose", "--dataset", "../x", needle="dataset"),
    _o("data", "diagnose", "--dataset", "tiny", "--split", "nosuch", needle="split"),
    _o("data", "diagnose", "--dataset", "tiny", "-d", "bidirectional", "--mix", "1.5",
       needle="mix"),
    _o("data", "diagnose", "--dataset", "tiny", "-d", "bidirectional", "--mix", "-0.1",
       needle="mix"),
    _o("data", "diagnose", "--dataset", "tiny", "-d", "bidirectional", "--mix", "nan",
       needle="mix"),
]
NO_CUDA_CASES = [
    pytest.param(["eval", "good", "--device", "cuda"], "cuda", id="eval good --device cuda",
                 marks=NO_CUDA),
    pytest.param(["5cat", "good", "--device", "cuda"], "cuda", id="5cat good --device cuda",
                 marks=NO_CUDA),
]


def _inputs(case: Case) -> None:
    """The files the data-import cases name, in the working folder."""
    case.file("in.txt", "one document of plain text\n")
    case.file("empty.txt", "")
    case.file("binary.txt", bytes(range(256)) * 8)
    case.file("data.bin", b"\x00\x01\x02")
    (case.cwd / "emptydir").mkdir()
    case.file("bad.jsonl", '{"text": "fine"}\n{"text": oops\n')
    case.file("nofield.jsonl", '{"body": "no text field"}\n')


@pytest.mark.parametrize("args,needle", [*COMMAND_CASES, *NO_CUDA_CASES])
def test_commands_refuse_bad_options(case, args, needle):
    _inputs(case)
    if args[:2] == ["5cat", "good"] and "--max-samples" not in args:
        args = [*args, "--max-samples", "4"]  # keeps a 5CAT that wrongly runs short
    check_refused(case, args, needles=(needle,) if needle else ())


# Typer/click reject these before any backlm code runs; the contract still holds for them.
USAGE_CASES = [
    ["train", "--max-steps", "abc"], ["train", "--nosuch"], ["eval"],
    ["eval", "good", "--step", "abc"], ["5cat", "good", "--max-samples", "1.5"],
    ["data", "diagnose", "--batches", "0"], ["data", "prepare", "--workers", "0"],
    ["data", "import"], ["nosuchcommand"],
]


@pytest.mark.parametrize("args", USAGE_CASES, ids=" ".join)
def test_usage_errors_are_one_line(case, args):
    check_refused(case, args)


# --- the real process: what the user's terminal gets -------------------------------------------


@pytest.mark.parametrize("make", [
    lambda c: bad_train("--set", "model.depth=0"),
    lambda c: bad_train("--config", "nope/x.yaml"),
    lambda c: ["eval", "nosuch"],
    lambda c: ["data", "import", "nope.txt"],
    lambda c: ["train", "--resume", "good", "--seed", "3"],
], ids=["train-depth-0", "train-config-missing", "eval-unknown", "import-missing",
        "resume-with-seed"])
def test_the_real_process_prints_one_line_on_stderr(case, make):
    args = make(case)
    before = snapshot(*case.roots())
    out = run_process(args, case.env, case.cwd)
    diff = disk_changes(before, snapshot(*case.roots()), case.world.root, case.dir)
    problems = judge(out)
    if out.stdout.strip():
        problems.append("stdout not empty")
    if diff:
        problems.append("disk changed")
    assert not problems, report(out, problems, diff)


# --- a refused run leaves the way open for the corrected command --------------------------------


@pytest.mark.parametrize("bad,fixed", [
    pytest.param(("--set", "train.eval_every=0"), ("--set", "train.eval_every=4"),
                 id="eval_every"),
    pytest.param(("--set", "model.head_dim=33", "--set", "model.width=66"),
                 ("--set", "model.head_dim=32", "--set", "model.width=64"), id="head_dim",
                 marks=pytest.mark.slow),
    pytest.param(("--set", "train.device=cuda"), ("--set", "train.device=cpu"), id="device",
                 marks=NO_CUDA),
])
def test_the_corrected_command_runs_after_a_refusal(case, bad, fixed):
    first = invoke(bad_train(*bad, steps=2), case.env)
    second = invoke(bad_train(*fixed, steps=2), case.env)
    assert second.code == 0, report(second, [
        f"the corrected command fails (exit {second.code}) after the bad one exited "
        f"{first.code}{' (' + first.error + ')' if first.error else ''}"])


# --- controls: the world works, so each refusal above is the bad input's doing -----------------


def test_controls_the_pristine_experiments_work(case):
    assert invoke(["eval", "good"], case.env).code == 0
    five = invoke(["5cat", "good", "--max-samples", "4"], case.env)
    assert five.code in (0, 1), five.output  # it ran its gates (1: some failed)
    assert list(case.exp("good").glob("evaluations/*/fivecat/*.json"))
    assert invoke(["log", "good"], case.env).code == 0
    assert invoke(["ls"], case.env).code == 0
    meta = json.loads((case.exp("part") / "metadata.json").read_text())
    assert meta["status"] == "interrupted" and _checkpoints(case.exp("part"))
