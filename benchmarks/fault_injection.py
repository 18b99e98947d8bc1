"""Fault injection: SIGKILL a training run again and again, resume it, compare with a clean run.

Usage::

    python benchmarks/fault_injection.py [--config cpu-tiny] [--set KEY=VALUE ...] [--kills 20]
        [--seed 0] [--max-steps 60] [--save-every 5] [--aimed 0.3] [--home DIR] [--workdir DIR]

1. A reference run trains uninterrupted, as a user runs it (``python -m backlm.cli train``).
2. The same config under another id is started the same way and killed with SIGKILL,
   ``--kills`` times, each time restarted with ``train --resume ID`` (or started again when the
   kill came before its experiment folder existed). Most kills come after a seeded random
   delay, uniform over the reference's measured startup plus two checkpoint intervals of its
   measured step time, so they land during import, data loading, restore, a step or a write.
   A share (``--aimed``) waits for a checkpoint's temporary folder to appear or for the
   research log to change once training runs, and kills then: inside a checkpoint write or an
   HDF5 flush, windows too short for random times to hit often.
3. After every kill: every visible ``checkpoints/step_*`` folder is complete and loads with its
   checksum verified (:func:`backlm.experiment.checkpoint.load`); ``h5dump -H`` and a data read of
   ``/scalars/loss`` succeed on the research log (when they fail, ``h5clear -s`` is tried on a
   copy and counted apart, as "readable after h5clear").
4. The run is resumed to completion; then no partial file (``.tmp``, ``.old``) is left in the
   experiment, and the per-step training losses (metrics.jsonl, the last record of each step),
   the research log's ``/scalars/loss`` (as h5dump prints it) and the final val_bpb equal the
   reference run's exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PARTIAL = (".tmp", ".old")  # what an interrupted write leaves (checkpoint and atomic writes)


@dataclass
class Kill:
    """One SIGKILL and what it left."""

    mode: str  # random | checkpoint | flush (aimed)
    at_s: float  # seconds after the process started
    resumed_from: int  # the session's starting checkpoint step (0: none)
    landed: str = ""
    checkpoints: int = 0  # visible checkpoint folders, all verified
    log: str = ""  # h5dump | after h5clear | none yet | UNREADABLE
    partial: list[str] = field(default_factory=list)
    capped: bool = False  # killed by the step cap before its time
    bad: list[str] = field(default_factory=list)  # anything that failed a check


@dataclass
class Outcome:
    """The whole experiment: every kill and the final comparison with the reference."""

    kills: list[Kill]
    sessions: int
    ref_wall_s: float
    faulty_wall_s: float
    startup_s: float
    step_s: float
    steps: int = 0
    loss_diff: float = math.inf  # max |loss - reference| over steps (metrics.jsonl)
    log_loss_diff: float = math.inf  # the same over /scalars/loss as h5dump prints it
    log_steps_ok: bool = False  # /scalars/step is 0..max_steps, no step twice
    bpb: tuple[float | None, float | None] = (None, None)  # at the last step: ref, faulty
    final_bpb: tuple[float | None, float | None] = (None, None)  # the summary's (best model)
    leftover: list[str] = field(default_factory=list)
    finished: bool = False

    def ok(self) -> bool:
        """Every property the fault-injection run must show."""
        return (self.finished and not self.leftover and self.loss_diff == 0
                and self.log_loss_diff == 0 and self.log_steps_ok
                and self.bpb[0] is not None and self.bpb[0] == self.bpb[1]
                and self.final_bpb[0] is not None and self.final_bpb[0] == self.final_bpb[1]
                and all(not k.bad for k in self.kills))


def train_argv(config: str, sets: list[str], exp_id: str, max_steps: int,
               save_every: int) -> list[str]:
    argv = [sys.executable, "-m", "backlm.cli", "train", "--config", config, "--id", exp_id,
            "--max-steps", str(max_steps), "--wandb", "off"]
    for s in [*sets, f"train.save_every={save_every}"]:
        argv += ["--set", s]
    return argv


def resume_argv(exp_id: str) -> list[str]:
    return [sys.executable, "-m", "backlm.cli", "train", "--resume", exp_id]


def files(exp: Path):
    from backlm.experiment.folder import Experiment

    return Experiment(exp)


def research_log(exp: Path) -> Path | None:
    """The experiment's research log once its metadata exists (it names the phase)."""
    return files(exp).research_log() if files(exp).metadata_path.is_file() else None


def last_records(exp: Path) -> dict[int, dict]:
    """metrics.jsonl: the last record of each step (a torn line is skipped)."""
    out: dict[int, dict] = {}
    path = files(exp).metrics_path
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        out.setdefault(record["step"], {}).update(record)
    return out


def h5dump_values(path: Path, dataset: str) -> list[float] | None:
    """The values h5dump prints for a 1-D dataset at full precision; None if it fails."""
    res = subprocess.run(["h5dump", "-m", "%.17g", "-d", dataset, str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0 or "DATA {" not in res.stdout:
        return [] if res.returncode == 0 else None
    data = res.stdout.split("DATA {", 1)[1].split("}", 1)[0]
    return [float(v) for v in re.sub(r"\(\d+\):", " ", data).replace(",", " ").split()]


def log_readable(path: Path) -> bool:
    header = subprocess.run(["h5dump", "-H", str(path)], capture_output=True, text=True)
    return header.returncode == 0 and h5dump_values(path, "/scalars/loss") is not None


def check_log(path: Path | None, scratch: Path) -> str:
    """How HDF5's own tools read the research log right after a kill."""
    if path is None or not path.exists():
        return "none yet"
    if log_readable(path):
        return "h5dump"
    copy = scratch / "copy.h5"
    shutil.copyfile(path, copy)
    cleared = subprocess.run(["h5clear", "-s", str(copy)], capture_output=True, text=True)
    return "after h5clear" if cleared.returncode == 0 and log_readable(copy) else "UNREADABLE"


def check_checkpoints(exp: Path) -> tuple[int, list[str]]:
    """Every visible checkpoint folder loads, checksum verified; (how many, failures)."""
    from backlm.errors import UserError
    from backlm.experiment import checkpoint as ckpt

    folders = sorted(files(exp).checkpoints.glob("step_*")) if exp.is_dir() else []
    bad = []
    for folder in folders:
        try:
            ckpt.load(folder, with_optimizer=True, verify=True)
        except UserError as exc:
            bad.append(f"{folder.name}: {exc}")
    return len(folders), bad


def partial_files(exp: Path) -> list[str]:
    return sorted(str(p.relative_to(exp)) for p in exp.rglob(".*")
                  if p.name.endswith(PARTIAL)) if exp.is_dir() else []


def resume_point(exp: Path) -> int:
    steps = files(exp).checkpoint_steps() if exp.is_dir() else []
    return steps[-1] if steps else 0


def _stat(path: Path | None) -> tuple:
    try:
        st = path.stat() if path else None
    except OSError:
        st = None
    return (st.st_ino, st.st_mtime_ns, st.st_size) if st else (None, None, None)


class Watch:
    """What the parent sees of one training session. It polls file metadata only (and reads
    metrics.jsonl when that changed), so it takes little CPU from the run it watches."""

    def __init__(self, exp: Path) -> None:
        self.exp, self.start_step = exp, resume_point(exp)
        self.stale = set(self._tmp())  # a killed session's leftovers, removed as it starts
        self.metrics = _stat(files(exp).metrics_path)
        self.first_ino = self.metrics[0]
        self.step: int | None = None
        self.log_baseline: tuple | None = None

    def _tmp(self) -> list[str]:
        folder = files(self.exp).checkpoints
        return [p.name for p in folder.glob(".step_*.tmp")] if folder.is_dir() else []

    def logged(self) -> int | None:
        """The last step in metrics.jsonl once this session rewrote it (None before)."""
        metrics = _stat(files(self.exp).metrics_path)
        if metrics != self.metrics and metrics[0] not in (None, self.first_ino):
            self.metrics = metrics
            records = last_records(self.exp)
            self.step = max(records) if records else None
        return self.step

    def checkpoint_writing(self) -> bool:
        """A checkpoint's temporary folder of this session exists."""
        now = set(self._tmp())
        if self.stale:
            self.stale &= now
            return False
        return bool(now)

    def log_written(self) -> bool:
        """The research log changed since this session trained its first step."""
        log = research_log(self.exp)
        if self.log_baseline is None:
            step = self.logged()
            if step is not None and step > self.start_step + 1:
                self.log_baseline = _stat(log)
            return False
        return _stat(log) != self.log_baseline


def session(argv: list[str], env: dict, log: Path, exp: Path, mode: str, delay: float,
            extra: float, cap: int) -> tuple[subprocess.Popen, float | None, bool]:
    """Start ``argv`` and SIGKILL it: after ``delay`` s (random), or ``extra`` s after its
    watch fires (aimed; ``delay`` is then the fallback), and at the latest once it logged
    ``cap`` steps past its checkpoint (a machine faster than the reference measured still
    gets its kills). Returns the process, the kill time in seconds after its start (None: it
    exited first) and whether the cap fired."""
    watch = Watch(exp)
    with open(log, "a") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline, fired, capped = t0 + delay, False, False
    while proc.poll() is None and time.monotonic() < deadline:
        if not fired:
            step = watch.logged()
            if step is not None and step >= watch.start_step + cap:
                capped = True
                break
            if (mode == "checkpoint" and watch.checkpoint_writing()) or (
                    mode == "flush" and watch.log_written()):
                deadline, fired = time.monotonic() + extra, True  # somewhere inside the write
        time.sleep(0.002)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    at = time.monotonic() - t0
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        return proc, None, False
    return proc, at, capped


def landed(kill: Kill, exp: Path, before: dict[int, dict]) -> str:
    """Where a kill struck, from what it left."""
    if not files(exp).metadata_path.is_file():
        return "setup (no experiment yet)"
    if any(".step_" in p for p in kill.partial):
        return "checkpoint write"
    if kill.log == "after h5clear":
        return "research-log write (open or flush)"
    if any(".h5." in p for p in kill.partial):
        return "research-log rebuild (resume)"
    if kill.partial:
        return "an atomic file write"
    records = last_records(exp)
    trained = [s for s in records if s > kill.resumed_from and "loss" in records[s]]
    fresh = [s for s in trained if records[s] != before.get(s)]
    if not fresh:
        return "startup (import, data, restore)"
    return f"training (after step {max(fresh)})"


def inject(config: str, sets: list[str], kills: int, seed: int, max_steps: int,
           save_every: int, workdir: Path, env: dict, aimed: float = 0.3,
           say=print) -> Outcome:
    """The whole experiment (see the module docstring); experiments under ``workdir``."""
    exps = workdir / "exps"
    exps.mkdir(parents=True, exist_ok=True)
    env = dict(env, BACKLM_EXPERIMENTS=str(exps))
    ref, faulty = exps / "reference", exps / "faulty"
    t = time.monotonic()
    with open(workdir / "reference.log", "w") as log:
        done = subprocess.run(train_argv(config, sets, ref.name, max_steps, save_every),
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    ref_wall = time.monotonic() - t
    if done.returncode != 0:
        raise SystemExit(f"the reference run failed; see {workdir / 'reference.log'}")
    startup = float(files(ref).metadata()["startup"]["first_step_start_s"])
    step_s = max(ref_wall - startup, 0.0) / max_steps
    say(f"reference: {ref_wall:.1f} s, startup {startup:.1f} s, {step_s:.3f} s/step")
    rng = random.Random(seed)
    span = startup + 2 * save_every * step_s
    out = Outcome([], 0, ref_wall, 0.0, startup, step_s)
    t = time.monotonic()
    while len(out.kills) < kills:
        mode = rng.choice(["checkpoint", "flush"]) if rng.random() < aimed else "random"
        delay = rng.uniform(0, span) if mode == "random" else span + 3 * save_every * step_s
        # checkpoint writes take a few hundred ms at most, flushes tens
        extra = rng.uniform(0, 0.3 if mode == "checkpoint" else 0.03)
        started = files(faulty).metadata_path.is_file()
        argv = (resume_argv(faulty.name) if started else
                train_argv(config, sets, faulty.name, max_steps, save_every))
        before, start = last_records(faulty), resume_point(faulty)
        # never let a session finish the run: the last step is for the final resume
        cap = min((2 if mode == "random" else 3) * save_every, max_steps - 1 - start)
        if cap < 1:  # nothing left to train but the last step: kill during startup
            mode, delay = "random", rng.uniform(0, 0.5 * startup)
        proc, at, capped = session(argv, env, workdir / "faulty.log", faulty, mode, delay,
                                   extra, cap)
        out.sessions += 1
        if at is None:
            out.finished = proc.returncode == 0
            say(f"session {out.sessions} exited ({proc.returncode}) before its kill")
            if out.finished:
                break
            raise SystemExit(f"a session failed; see {workdir / 'faulty.log'}")
        kill = Kill(mode, at, start, capped=capped)
        kill.checkpoints, kill.bad = check_checkpoints(faulty)
        kill.log = check_log(research_log(faulty), workdir) if shutil.which("h5dump") else "-"
        if kill.log == "UNREADABLE":
            kill.bad.append("research log unreadable")
        kill.partial = partial_files(faulty)
        kill.landed = landed(kill, faulty, before)
        out.kills.append(kill)
        say(f"kill {len(out.kills):>2} ({mode + '*' * capped:<11} at {at:6.2f} s, from step "
            f"{start:>3}): "
            f"{kill.landed}; {kill.checkpoints} checkpoints verified; log {kill.log}"
            + (f"; partial: {', '.join(kill.partial)}" if kill.partial else "")
            + (f"; FAILED: {kill.bad}" if kill.bad else ""))
    while not out.finished:
        started = files(faulty).metadata_path.is_file()
        argv = (resume_argv(faulty.name) if started else
                train_argv(config, sets, faulty.name, max_steps, save_every))
        with open(workdir / "faulty.log", "a") as log:
            done = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        out.sessions += 1
        if done.returncode != 0:
            raise SystemExit(f"the final resume failed; see {workdir / 'faulty.log'}")
        out.finished = True
    out.faulty_wall_s = time.monotonic() - t
    compare(out, ref, faulty, max_steps)
    return out


def compare(out: Outcome, ref: Path, faulty: Path, max_steps: int) -> None:
    """Fill in the final comparison of the fault-injected run with the reference."""
    a, b = last_records(ref), last_records(faulty)
    steps = range(1, max_steps + 1)
    out.steps = max((s for s in b if "loss" in b[s]), default=0)
    if all("loss" in a.get(s, {}) and "loss" in b.get(s, {}) for s in steps):
        out.loss_diff = max(abs(a[s]["loss"] - b[s]["loss"]) for s in steps)
    out.bpb = (a.get(max_steps, {}).get("val_bpb"), b.get(max_steps, {}).get("val_bpb"))
    out.final_bpb = tuple((files(x).metadata().get("results") or {}).get("val_bpb")
                          for x in (ref, faulty))
    out.leftover = partial_files(faulty)
    if shutil.which("h5dump"):
        ra, rb = (h5dump_values(research_log(x), "/scalars/loss") for x in (ref, faulty))
        sb = h5dump_values(research_log(faulty), "/scalars/step")
        out.log_steps_ok = sb == list(range(max_steps + 1))
        if ra is not None and rb is not None and len(ra) == len(rb):
            out.log_loss_diff = max((abs(x - y) for x, y in zip(ra, rb, strict=True)
                                     if not (math.isnan(x) and math.isnan(y))), default=0.0)


def report(out: Outcome, kills_asked: int) -> None:
    """The summary tables (Markdown)."""
    by_place: dict[str, int] = {}
    for k in out.kills:
        place = k.landed.split(" (after")[0]
        by_place[place] = by_place.get(place, 0) + 1
    print("\n| where the kills landed | kills |\n|---|---:|")
    for place, n in sorted(by_place.items(), key=lambda x: -x[1]):
        print(f"| {place} | {n} |")
    readable = sum(k.log == "h5dump" for k in out.kills)
    cleared = sum(k.log == "after h5clear" for k in out.kills)
    none = sum(k.log == "none yet" for k in out.kills)
    verified = sum(k.checkpoints for k in out.kills)
    bpb, final = (" / ".join("-" if v is None else f"{v:.6f}" for v in pair)
                  for pair in (out.bpb, out.final_bpb))
    rows = [
        ("SIGKILLs", f"{len(out.kills)} of {kills_asked} ({out.sessions} sessions; "
                     f"{sum(k.capped for k in out.kills)} cut short by the step cap)"),
        ("reference run / fault-injected run (wall)",
         f"{out.ref_wall_s:.0f} s / {out.faulty_wall_s:.0f} s"),
        ("kills after which every visible checkpoint loaded (checksum verified)",
         f"{sum(not any('step_' in b for b in k.bad) for k in out.kills)} of {len(out.kills)}"
         f" ({verified} loads)"),
        ("research log read by h5dump right after the kill", f"{readable} of {len(out.kills)}"),
        ("... readable only after h5clear -s (killed in mid-flush)", str(cleared)),
        ("... not written yet", str(none)),
        ("kills that left a partial file (removed on resume)",
         str(sum(bool(k.partial) for k in out.kills))),
        ("run finished", f"{out.finished} (step {out.steps})"),
        ("partial files left at the end", ", ".join(out.leftover) or "none"),
        ("max abs(loss − reference), metrics.jsonl, every step", f"{out.loss_diff:g}"),
        ("max abs(loss − reference), research log read by h5dump", f"{out.log_loss_diff:g}"),
        ("research log steps 0..max_steps, none twice", str(out.log_steps_ok)),
        ("val_bpb at the last step, reference / fault-injected", bpb),
        ("final model's val_bpb (run summary), reference / fault-injected", final),
        ("result", "PASS" if out.ok() else "FAIL"),
    ]
    print("\n| check | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu-tiny")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="config override KEY=VALUE (repeatable), for both runs")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--save-every", type=int, default=5)
    parser.add_argument("--aimed", type=float, default=0.3,
                        help="share of kills aimed at a checkpoint write or an HDF5 flush")
    parser.add_argument("--home", type=Path, default=None,
                        help="BACKLM_HOME (data; default: $BACKLM_HOME or ~/.cache/backlm)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the experiments go (default: a new temporary folder)")
    args = parser.parse_args()
    from backlm.hardware import cpu_model

    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores)")
    env = dict(os.environ, WANDB_MODE="disabled")
    if args.home:
        env["BACKLM_HOME"] = str(args.home)
        os.environ["BACKLM_HOME"] = str(args.home)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="backlm-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{args.config}, {args.max_steps} steps, a checkpoint every {args.save_every}, "
          f"{args.kills} SIGKILLs (seed {args.seed}, {args.aimed:.0%} aimed); "
          f"experiments in {workdir}")
    prepare(args.config, args.sets)
    if not shutil.which("h5dump"):
        print("h5dump is not installed: the research-log checks are skipped")
    out = inject(args.config, args.sets, args.kills, args.seed, args.max_steps,
                 args.save_every, workdir, env, args.aimed)
    report(out, args.kills)
    sys.exit(0 if out.ok() else 1)


def prepare(config: str, sets: list[str]) -> None:
    """Prepare the dataset first (the embedded corpus on first use), so that no run's
    measured startup includes it."""
    from backlm.config import RunConfig, load_config
    from backlm.train.launch import ensure_data

    cfg = load_config(RunConfig, preset=config, overrides=sets)
    ensure_data(cfg, cfg.model.vocab_size, print)


if __name__ == "__main__":
    main()
