"""5CAT of one checkpoint, as ``backlm 5cat`` runs it: resolve the experiment and step, check
that its held-out text exists before loading anything, run the gates, save the result and add
its headline figures to the research log."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backlm.callbacks import Progress
from backlm.direction import Direction
from backlm.errors import UserError
from backlm.experiment import Experiment
from backlm.fivecat.engine import FivecatResult, held_out_splits, run_fivecat, save_result
from backlm.fivecat.spec import load_spec


@dataclass
class FivecatOptions:
    """What to check and how; ``None`` means the default."""

    step: int | None = None  # default: best, else latest
    max_samples: int | None = None  # documents per held-out set (default from the spec)
    direction: str | None = None  # the --direction flag: judge as this instead of the declared
    spec: str | None = None  # thresholds YAML (default: the packaged fivecat.yaml)
    device: str = "auto"


@dataclass
class FivecatReport:
    """One checked checkpoint."""

    exp: Experiment
    step: int
    phase: str
    checkpoint_direction: Direction  # what the checkpoint declares
    result: FivecatResult  # judged as result.direction
    path: Path  # where the JSON result was saved
    warnings: list[str] = field(default_factory=list)  # besides the result's own


def check(ref: str, root: Path, options: FivecatOptions,
          progress: Progress | None = None) -> FivecatReport:
    """Run 5CAT on an experiment's checkpoint (id, tag or path) and save the result."""
    from backlm.experiment import find
    from backlm.experiment.loading import load_model, resolve_step
    from backlm.logs.hdf5 import log_eval

    spec = load_spec(options.spec).with_max_samples(options.max_samples)
    override = Direction.parse(options.direction) if options.direction else None  # the flag
    exp = find(ref, root)
    data_dir = exp.data_dir()
    held_out_splits(data_dir)  # a missing data folder fails before the model loads
    resolve_step(exp, options.step)
    lm = load_model(exp, step=options.step, device=options.device)
    declared = override or lm.direction
    result = run_fivecat(lm.model, lm.tokenizer, declared, data_dir, spec, progress=progress)
    path = exp.fivecat_path(lm.phase, lm.step, override if override is not lm.direction else None)
    save_result(path, result, {"experiment": exp.id, "step": lm.step, "phase": lm.phase,
                               "checkpoint_direction": lm.direction})
    report = FivecatReport(exp, lm.step, lm.phase, lm.direction, result, path)
    try:
        log_eval(exp, lm.phase, "5cat", lm.step, result.log_values())
    except UserError as exc:
        report.warnings.append(f"research log not updated: {exc}")
    return report
