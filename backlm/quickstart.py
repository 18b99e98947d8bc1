"""``backlm quickstart``: the whole tool in one command, resumable.

Trains (preparing the embedded corpus on first use) cpu-tiny forward, backward and bidirectional models with
one seed (so all three read the same reading-order tokens), runs 5CAT on each, and writes a
comparison of the three. Every stage looks at what the experiments folder already holds: a
finished model is kept, an interrupted one resumed, a 5CAT result of the final step reused, so
rerunning the command after Ctrl-C continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backlm.callbacks import Progress
from backlm.direction import Direction
from backlm.experiment import folder as xp

DIRECTIONS = tuple(Direction)
# 40% of the cpu-tiny preset's steps: three models, their checks and the comparison fit in
# ~13 minutes on 2 cores (BENCHMARKS.md "Quickstart"); evaluation and checkpoints every 40.
STEPS = 80
SETTINGS = ("train.eval_every=40", "train.save_every=40", "log.wandb=off")


@dataclass
class Stage:
    """One step of the quickstart and what became of it."""

    name: str
    status: str = "pending"  # pending, done, skipped (already done), failed
    detail: str = ""


@dataclass
class QuickstartResult:
    """The members trained, their 5CAT results, the comparison's folder."""

    ids: list[str]
    stages: list[Stage] = field(default_factory=list)
    fivecat: dict[str, Any] = field(default_factory=dict)  # id -> FivecatResult
    comparison: Path | None = None
    stopped: Any = None  # the summary of a member that did not finish (interrupted, failed)


def member_id(prefix: str, direction: Direction) -> str:
    """The experiment id of one member."""
    return xp.check_id(f"{prefix}-{direction}")


def configs(prefix: str, seed: int, steps: int, overrides: Sequence[str] = ()
            ) -> dict[str, Any]:
    """Each member's resolved config (cpu-tiny, the quickstart's settings, then
    ``overrides``), validated before anything is written. A ``--set`` that the quickstart
    would replace (a member's direction, id, seed or steps) is refused naming what wins."""
    from backlm.config import Flags, RunConfig, load_config

    labels = {"id": f"quickstart's member ids ({prefix}-<direction>, from --prefix)",
              "train.seed": f"--seed {seed}", "train.max_steps": f"--steps {steps}"}
    fixes = {"data.direction": "drop the --set", "id": "drop the --set (use --prefix)",
             "train.seed": "drop the --set (use --seed)",
             "train.max_steps": "drop the --set (use --steps)"}
    out = {}
    for direction in DIRECTIONS:
        flags = Flags({"id": member_id(prefix, direction), "data": {"direction": direction},
                       "train": {"seed": seed, "max_steps": steps}}, labels, fixes)
        flags.labels["data.direction"] = (f"quickstart's per-member direction ({direction} "
                                          f"for {member_id(prefix, direction)}; each member "
                                          "trains its own)")
        out[direction] = load_config(RunConfig, preset="cpu-tiny",
                                     overrides=[*SETTINGS, *overrides], flags=flags)
    return out


def _train(cfg: Any, root: Path, observers: Sequence[Any], say: Callable[[str], None]
           ) -> tuple[str, Any]:
    """Train a member, or continue it, or keep it: (what happened, its summary)."""
    from backlm.train import train
    from backlm.train.plan import FINISHED

    exp = xp.Experiment(Path(root) / cfg.id)
    if exp.metadata_path.is_file():
        if str(exp.metadata().get("status")) in FINISHED:
            return "skipped", None
        say(f"continuing {cfg.id}")
        return "done", train(None, root, resume=cfg.id, observers=observers, say=say)
    return "done", train(cfg, root, observers=observers, say=say, explicit={"id"})


def _fivecat(exp_id: str, root: Path, progress: Progress | None
             ) -> tuple[str, dict[str, Any]]:
    """5CAT of a member's model (its best step), or the result already saved for it: the
    saved JSON (``gates_passed``, ``gates_total``, ``inverted``, ``rows``...)."""
    from backlm.experiment.loading import chosen_step
    from backlm.fivecat.runner import FivecatOptions, check

    exp = xp.find(exp_id, root)
    saved = exp.fivecat_path(exp.phase, chosen_step(exp))
    status = "skipped"
    if not saved.is_file():
        saved, status = check(exp_id, root, FivecatOptions(), progress=progress).path, "done"
    return status, xp.read_json(saved, "5CAT result")


def run_quickstart(root: Path, *, prefix: str = "quickstart", seed: int = 0,
                   steps: int = STEPS, overrides: Sequence[str] = (),
                   observers: Sequence[Any] = (),
                   say: Callable[[str], None] = lambda _: None,
                   progress: Progress | None = None,
                   compare: Callable[[list[str], Path], Path] | None = None
                   ) -> QuickstartResult:
    """Run (or continue) the quickstart in ``root``; ``compare(ids, out)`` writes the
    comparison into ``out`` (:func:`comparison_dir`) and returns it; it is skipped when a
    comparison newer than every member's results is there already. A member that does not finish (Ctrl-C) ends it early
    with :attr:`QuickstartResult.stopped` set."""
    from backlm.train.plan import FINISHED

    cfgs = configs(prefix, seed, steps, overrides)
    ids = [cfg.id for cfg in cfgs.values()]
    _check_outputs(root, ids, comparison_dir(root, prefix) if compare is not None else None)
    result = QuickstartResult(ids)
    for direction, cfg in cfgs.items():
        stage = Stage(f"train {direction} ({cfg.id})")
        result.stages.append(stage)
        say(f"[bold]quickstart · training {direction}[/] ({cfg.id}, {steps} steps)")
        stage.status, summary = _train(cfg, root, observers, say)
        if summary is not None and summary.status not in FINISHED:
            stage.status, stage.detail = "stopped", summary.status
            result.stopped = summary
            return result
    for exp_id in ids:
        stage = Stage(f"5CAT {exp_id}")
        result.stages.append(stage)
        say(f"[bold]quickstart · 5CAT[/] {exp_id}")
        stage.status, result.fivecat[exp_id] = _fivecat(exp_id, root, progress)
    if compare is not None:
        stage = Stage("comparison")
        result.stages.append(stage)
        out = comparison_dir(root, prefix)
        if _fresh(out, [xp.Experiment(Path(root) / i) for i in ids]):
            stage.status, result.comparison = "skipped", out
        else:
            say("[bold]quickstart · comparing the three[/]")
            result.comparison, stage.status = compare(ids, out), "done"
    return result


def _check_outputs(root: Path, ids: Sequence[str], out: Path | None) -> None:
    """Before any training: every member's folder is new or a backlm experiment (continued),
    and the comparison folder one compare may replace; a user's folder is never touched."""
    from backlm.compare.output import MARKDOWN
    from backlm.compare.run import check_output

    for exp_id in ids:
        exp = xp.Experiment(Path(root) / exp_id)
        if exp.path.exists() and not exp.metadata_path.is_file():
            xp.check_free_id(root, exp_id, "choose another --prefix")
    if out is not None:
        check_output(out, MARKDOWN)


def comparison_dir(root: Path, prefix: str) -> Path:
    """Where the quickstart's comparison goes: ``comparisons/<prefix>`` beside the
    experiments folder."""
    return Path(root).resolve().parent / "comparisons" / prefix


def _fresh(out: Path, members: Sequence[xp.Experiment]) -> bool:
    """Whether a comparison in ``out`` is newer than every member's results."""
    from backlm.compare.output import MARKDOWN

    report = out / MARKDOWN
    if not report.is_file():
        return False
    newest = max(p.stat().st_mtime for exp in members
                 for p in [exp.metadata_path, *(r for _, r in exp.fivecat_results())])
    return report.stat().st_mtime > newest
