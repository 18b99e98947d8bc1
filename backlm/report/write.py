"""``backlm report``: an experiment's RESEARCH_REPORT.md and figures/, and the overview of all.

The report is built whole in a hidden staging folder inside the experiment, then swapped in
(figures folder and report file by rename), so a failure at any point before the swap leaves
the previous report as it was. Each section is written from the data that exists; a section
whose data is missing says which command produces it. Sections: header (direction first),
configuration, lineage, learning curves, loss by token position, gradient and activation
statistics, 5CAT, evaluations, early stop and cost, notes, generation samples.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backlm.atomic import mark_owned
from backlm.direction import Direction
from backlm.errors import UserError
from backlm.experiment import Experiment
from backlm.report.results import (
    evaluation_section,
    fivecat_section,
    latest_fivecat,
    read_evaluations,
    reversal_section,
)
from backlm.report.sections import (
    Context,
    attention_section,
    dynamics_section,
    fmt,
    learning_curves,
    log_or_reason,
    plural,
    position_section,
    table,
)

HOW_IT_READS = {
    Direction.FORWARD: "reads and writes text left to right (the usual order)",
    Direction.BACKWARD: "reads and writes text right to left: each document's tokens "
                        "reversed, so it writes what came before",
    Direction.BIDIRECTIONAL: "reads and writes either way, chosen by the marker token after "
                             "BOS (`<|forward|>` or `<|backward|>`)",
}  # looked up by the name the metadata holds, which equals its Direction
KEY_SETTINGS = ("data.dataset", "data.direction", "data.mix", "model.depth", "model.width",
                "model.head_dim", "model.seq_len", "model.vocab_size", "train.max_steps",
                "train.total_batch_tokens", "train.device_batch_size", "train.seed",
                "train.device", "train.dtype", "optim.matrix_lr", "optim.embedding_lr",
                "optim.warmup_steps", "optim.warmdown_frac", "optim.init_lr_frac",
                "early_stop.enabled", "early_stop.monitor", "early_stop.patience",
                "fivecat.every", "log.hdf5")
SAMPLES_SHOWN = 2  # sampled steps shown (the first and the last), every order of each
NOTE_LINES = 50  # most recent lines of notes and of issues


@dataclass
class ReportResult:
    """What ``write_report`` wrote."""

    exp: Experiment
    path: Path
    figures: list[Path]
    missing: list[str]  # one line per section without data, naming what produces it


def write_report(ref: str, root: Path) -> ReportResult:
    """Write ``RESEARCH_REPORT.md`` and ``figures/`` into an experiment (id, tag or path)."""
    from backlm.experiment import find

    exp = find(ref, root)
    meta = exp.metadata()
    check_outputs(exp)
    try:
        staging = exp.report_staging()
    except OSError as exc:
        raise UserError(f"cannot write a report into {exp.path}: {exc.strerror or exc}; make "
                        "the experiment folder writable") from None
    try:
        ctx = _context(exp, meta, staging / exp.figures_dir.name)
        text = build(ctx)
        (staging / exp.report_path.name).write_text(text, encoding="utf-8")
        _install(exp, staging)
    except OSError as exc:  # name the report, not the staging folder it was built in
        raise UserError(f"cannot write {exp.report_path}: {exc.strerror or exc}; free some "
                        "space or make the experiment folder writable") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ReportResult(exp, exp.report_path, [exp.figures_dir / n for n in ctx.figures],
                        ctx.missing)


def _context(exp: Experiment, meta: dict[str, Any], figures_dir: Path) -> Context:
    from backlm.config import read_yaml
    from backlm.logs.jsonl import read

    try:
        config = read_yaml(exp.config_path) if exp.config_path.is_file() else {}
    except UserError:
        config = {}  # the configuration section shows the file as it is
    return Context(exp, meta, config, read(exp.metrics_path), read_evaluations(exp),
                   figures_dir)


def build(ctx: Context) -> str:
    """The report's Markdown (figures drawn into ``ctx.figures_dir`` on the way)."""
    log = log_or_reason(ctx)
    lines: list[str] = []
    for section in (header, configuration, lineage, learning_curves):
        lines += section(ctx)
    lines += position_section(ctx, log)
    lines += dynamics_section(ctx, log)
    lines += attention_section(ctx, log)
    for section in (fivecat_section, evaluation_section, reversal_section, cost_section,
                    notes_section, samples_section):
        lines += section(ctx)
    return "\n".join(lines).rstrip() + "\n"


REPORT_TITLE = "# Research report: "  # the first line of every report backlm writes
FIGURES = "report figures folder"  # what made the figures folder, in its marker and messages


def _old_figures(folder: Path) -> bool:
    # an older backlm wrote no ownership marker: its figures folder holds only PNG files
    return all(p.is_file() and not p.is_symlink() and p.suffix == ".png"
               for p in folder.iterdir())


def check_outputs(exp: Experiment) -> None:
    """Refuse, before anything is drawn, a figures folder or report file that backlm did not
    write (a user's files there are never replaced)."""
    from backlm.atomic import check_replaceable

    check_replaceable(exp.figures_dir, FIGURES, _old_figures)
    path = exp.report_path
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UserError(f"{path} is not a report backlm wrote: move it away to write a report")
    if path.is_file():
        with open(path, "rb") as f:
            first = f.readline(200)
        if not first.startswith(REPORT_TITLE.encode()):
            raise UserError(f"{path} is not a report backlm wrote (it does not start with "
                            f"{REPORT_TITLE.strip()!r}): move it away to write a report")


def _install(exp: Experiment, staging: Path) -> None:
    """Swap the staged report in: the old figures folder aside, the new one and the report
    file renamed into place; on a failure the old figures come back."""
    new_figures = staging / exp.figures_dir.name
    old_figures = staging / "previous-figures"
    moved = False
    check_outputs(exp)  # again, just before the swap
    if new_figures.exists():
        mark_owned(new_figures, FIGURES)
    if exp.figures_dir.exists():
        os.rename(exp.figures_dir, old_figures)
        moved = True
    try:
        if new_figures.exists():
            os.rename(new_figures, exp.figures_dir)
        os.replace(staging / exp.report_path.name, exp.report_path)
    except BaseException:
        if moved:
            if exp.figures_dir.exists():
                shutil.rmtree(exp.figures_dir, ignore_errors=True)
            os.rename(old_figures, exp.figures_dir)
        raise


# --- sections from the experiment's records ---------------------------------------------------


def status(exp: Experiment, meta: dict[str, Any]) -> str:
    """The recorded status; a "running" run whose process is gone shows as stopped."""
    value = str(meta.get("status", "?"))
    if value == "running" and not exp.is_running():
        return "stopped"
    return value


def header(ctx: Context) -> list[str]:
    exp, meta = ctx.exp, ctx.meta
    d = ctx.direction
    state = status(exp, meta)
    lines = [f"{REPORT_TITLE}{exp.id}", "",
             f"**Direction: {d}** — the model {HOW_IT_READS.get(d, 'has an unknown direction')}.",
             ""]
    lines += table(["phase", "status", "depth", "created", "finished", "git commit"],
                   [(meta.get("phase"), state, meta.get("depth"), meta.get("created"),
                     meta.get("finished"), meta.get("git_commit"))])
    if state == "stopped":
        lines += ["The metadata says running, but no process holds the run lock: the run was "
                  f"killed or crashed. Continue it with `backlm train --resume {exp.id}`.", ""]
    if meta.get("command"):
        lines += [f"Command: `{meta['command']}` · host {fmt(meta.get('host'))} · device "
                  f"{fmt(meta.get('device'))} · torch {fmt(meta.get('torch'))}", ""]
    steps = exp.checkpoint_steps()
    if steps:
        best = {k: (exp.best(k) or {}).get("step") for k in ("val", "5cat")}
        lines += [f"Checkpoints at steps {', '.join(map(str, steps))}; best by validation: "
                  f"{fmt(best['val'])}; best by 5CAT: {fmt(best['5cat'])}.", ""]
    else:
        lines += ctx.absent("No checkpoints: `backlm train` saves one every train.save_every "
                            f"steps (continue with `backlm train --resume {exp.id}`)")
    return lines


def configuration(ctx: Context) -> list[str]:
    lines = ["## Configuration", ""]
    path = ctx.exp.config_path
    if not path.is_file():
        return lines + ctx.absent(f"No {path.name}: `backlm train` writes the resolved "
                                  "configuration when it creates the experiment")
    keys = [k for k in KEY_SETTINGS
            if k != "data.mix" or ctx.direction == Direction.BIDIRECTIONAL]
    rows = [(k, ctx.setting(k)) for k in keys if ctx.setting(k) is not None]
    lines += table(["setting", "value"], rows) if rows else [
        f"_{path.name} could not be read as a configuration; shown as it is below._", ""]
    text = path.read_text(encoding="utf-8", errors="replace")
    return lines + [f"<details><summary>full {path.name}</summary>", "",
                    *code_block(text, "yaml"), "</details>", ""]


def lineage(ctx: Context) -> list[str]:
    from backlm.experiment.notes import latest_step
    from backlm.train import lineage_costs

    exp = ctx.exp
    lines = ["## Lineage", ""]
    link = exp.parent_link()
    chain = exp.lineage()
    if link is None:
        lines += ["A base run: trained from scratch (no parent).", ""]
    else:
        lost = [i for i in link.get("chain_ids", []) if i not in {e.id for e in chain}]
        lines += [f"Started from `{link.get('parent_id')}` at step {fmt(link.get('step'))} "
                  f"({link.get('parent_phase', '?')}, {link.get('parent_direction', '?')}); "
                  f"learning rates × {fmt(link.get('init_lr_frac'))}."
                  + (f" Ancestors no longer present: {', '.join(lost)}." if lost else ""), ""]
    costs = {r["experiment"]: r for r in lineage_costs(exp)}
    rows = []
    for e in chain:
        parent = e.parent_link()
        meta = _meta(e)
        c = costs.get(e.id, {})
        if e.training_summary() is None:  # a run cut short: its last step, no totals
            c = {"steps": latest_step(e)}
        rows.append((e.id, meta.get("phase"), meta.get("direction"),
                     f"{parent.get('parent_id')} @ {parent.get('step')}" if parent else "scratch",
                     c.get("steps"), c.get("tokens"), c.get("wall_seconds"), c.get("gpu_hours"),
                     c.get("usd")))
    return lines + table(["experiment", "phase", "direction", "from", "steps", "tokens",
                          "wall s", "GPU-hours", "USD"], rows)


def _meta(exp: Experiment) -> dict[str, Any]:
    try:
        return exp.metadata()
    except UserError:
        return {}


def cost_section(ctx: Context) -> list[str]:
    exp = ctx.exp
    lines = ["## Early stopping and cost", ""]
    s = exp.training_summary()
    if s is None:
        state = status(exp, ctx.meta)
        hint = (f"; continue it with `backlm train --resume {exp.id}`"
                if state != "running" else "")
        return lines + ctx.absent(f"No {exp.summary_path.name}: `backlm train` writes it when "
                                  f"a run ends, and this run is {state}{hint}")
    best = s.get("best") or {}
    signals = s.get("signals") or {}
    rows = [("stop reason", s.get("stop_reason")),
            ("best", f"{best.get('monitor', '?')} {fmt(best.get('value'))} at step "
                     f"{fmt(best.get('step'))}" if best.get("step") is not None else None),
            ("final model step", s.get("final_model_step")),
            ("steps", f"{fmt(s.get('steps'))} of {fmt(s.get('max_steps'))}"),
            ("tokens", s.get("tokens")), ("wall time (s)", s.get("wall_seconds")),
            ("tokens/s", s.get("tokens_per_sec")), ("MFU", s.get("mfu")),
            ("device", f"{fmt(s.get('device'))}" + (f" × {s['gpus']} GPUs" if s.get("gpus")
                                                     else "")),
            ("GPU-hours", s.get("gpu_hours")), ("USD per GPU-hour", s.get("usd_per_gpu_hour")),
            ("cost (USD)", s.get("usd") if s.get("usd") is not None
             else "- (set cost.usd_per_gpu_hour)"),
            ("val bpb, first → last", f"{fmt(s.get('first_val_bpb'))} → {fmt(s.get('val_bpb'))}"),
            ("plateau at", signals.get("plateau_at")), ("sessions", s.get("sessions"))]
    return lines + table(["", "value"], rows)


def notes_section(ctx: Context) -> list[str]:
    lines = ["## Notes", ""]
    found = False
    for issue, title in ((False, "Notes"), (True, "Issues")):
        path = ctx.exp.notes_path(issue)
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        entries = [x for x in text.splitlines() if x.strip()]
        if entries:
            found = True
            lines += [f"{title} ({path.name}, {plural(len(entries), 'line')}"
                      + (f", the last {NOTE_LINES}" if len(entries) > NOTE_LINES else "") + "):",
                      "", *code_block("\n".join(entries[-NOTE_LINES:]))]
    if not found:
        lines += ctx.absent(f'No notes: add one with `backlm note {ctx.exp.id} "text"` '
                            "(`--issue` for an issue)")
    return lines


def samples_section(ctx: Context) -> list[str]:
    from backlm.logs.jsonl import read

    exp = ctx.exp
    lines = ["## Generation samples", ""]
    records = [r for r in read(exp.samples_path) if isinstance(r, dict) and "step" in r]
    if not records:
        every = ctx.setting("log.sample_every")
        return lines + ctx.absent(
            f"No generation samples: training writes them every log.sample_every steps "
            f"({fmt(every)} in this run, which reached step {ctx.last_step()}); train with "
            "`--set log.sample_every=N` to record them")
    bad = reading_order_mismatches(exp, records)
    steps = sorted({r["step"] for r in records})
    lines += [f"{len(records)} samples at {len(steps)} steps ({steps[0]}–{steps[-1]}), "
              "stored with their tokens in model order and in reading order; shown in reading "
              "order.", ""]
    if bad is None:
        lines += ["_The tokenizer could not be loaded: reading order not re-checked._", ""]
    elif bad:
        lines += [f"**{bad} of {len(records)} samples' reading-order tokens do not match their "
                  "model-order tokens turned back into reading order.**", ""]
    else:
        lines += ["Every sample's reading-order tokens equal its model-order tokens turned back "
                  "into reading order.", ""]
    for step in dict.fromkeys([steps[0], steps[-1]][:SAMPLES_SHOWN]):
        for r in (r for r in records if r["step"] == step):
            lines += [f"Step {step}, order {r.get('order', '?')} (temperature "
                      f"{fmt(r.get('temperature'))}):", "",
                      *code_block(str(r.get("reading_order_text", "")))]
    return lines


def reading_order_mismatches(exp: Experiment, records: list[dict[str, Any]]) -> int | None:
    """How many samples' stored reading-order ids differ from their model-order ids turned
    back with :func:`backlm.direction.to_reading_order`; None without a tokenizer."""
    from backlm.direction import to_reading_order

    try:
        from backlm.tokenizer import Tokenizer

        ids = Tokenizer.load(exp.tokenizer_dir).special_ids
    except (UserError, OSError, ValueError):
        return None
    bad = 0
    for r in records:
        try:
            direction = Direction.parse(r["direction"])  # the samples file's name
            ok = to_reading_order(r["model_order_ids"], direction, ids) == list(
                r["reading_order_ids"])
        except (KeyError, TypeError, ValueError, UserError):
            ok = False
        bad += not ok
    return bad


def code_block(text: str, lang: str = "") -> list[str]:
    """A fenced block whose fence no run of tildes in ``text`` can close."""
    runs = [len(line.strip()) for line in text.splitlines() if set(line.strip()) == {"~"}]
    longest = max(runs, default=0)
    fence = "~" * max(3, longest + 1)
    return [fence + lang, text.rstrip("\n"), fence, ""]


# --- the overview of every experiment ---------------------------------------------------------


def overview(root: Path) -> list[dict[str, Any]]:
    """One row per experiment, in lineage order: id, depth in the tree, phase, direction,
    status, step, best metric, 5CAT (passed gates of the latest result) and whether a report
    exists."""
    from backlm.experiment import list_rows, tree_rows

    listed = {r["id"]: r for r in list_rows(root)}
    out = []
    for row in tree_rows(root):
        exp = Experiment(Path(root) / row["id"])
        five = latest_fivecat(exp)
        out.append({
            "id": row["id"], "depth_in_tree": row["depth_in_tree"], "phase": row["phase"],
            "direction": row["direction"], "status": row["status"],
            "step": listed.get(row["id"], {}).get("step", "?"), "best": row["best"],
            "fivecat": f"{five.get('gates_passed', '?')}/5" if five else None,
            "report": exp.report_path.is_file(),
        })
    return out
