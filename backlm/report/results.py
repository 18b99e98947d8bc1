"""The research report's result sections: the 5CAT table and its history, and the evaluation
tables (native vs cross direction), read from what ``backlm 5cat`` and ``backlm eval`` saved
(and the 5CAT figures training added to each step's metrics)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from backlm.direction import ORDERS, Direction
from backlm.experiment.folder import FIVECAT, Experiment
from backlm.report import figures as figs
from backlm.report.sections import Context, fmt, number, table

GATES = ("A", "B", "C", "D", "E")
# Each gate's figure: its name and its y label with the unit of its worst value.
GATE_AXES = {"A": ("offset sweep", "logp(+1) − max other (nats)"),
             "B": ("direction margin", "order margin (relative CE)"),
             "C": ("context ablation", "Δ logp, ablated context (nats)"),
             "D": ("rollout", "rollout / teacher-forced (ratio)"),
             "E": ("generalisation", "CE gap per entropy bin (relative)")}


# --- 5CAT -----------------------------------------------------------------------------------


def fivecat_results(exp: Experiment) -> list[dict[str, Any]]:
    """Every saved ``backlm 5cat`` result of the experiment (all phases), by step."""
    import json

    out = []
    root = exp.evaluations_root
    for path in sorted(root.glob(f"*/{FIVECAT}/*.json")) if root.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("step"), int):
            data["_judged_as_other"] = data.get("direction") != data.get(
                "checkpoint_direction", data.get("direction"))
            out.append(data)
    return sorted(out, key=lambda d: (d["step"], str(d.get("created", ""))))


def latest_fivecat(exp: Experiment) -> dict[str, Any] | None:
    """The newest 5CAT result judged as the declared direction (else the newest)."""
    results = fivecat_results(exp)
    own = [r for r in results if not r["_judged_as_other"]]
    return (own or results or [None])[-1]


def _worst(rows: list[dict[str, Any]], gate: str) -> float | None:
    sel = [r for r in rows if r.get("gate") == gate
           and (gate != "B" or r.get("figure") == "order margin")]
    if not sel:
        return None
    up = sel[0].get("op") == ">="
    values = [r["value"] if number(r.get("value")) else (-math.inf if up else math.inf)
              for r in sel]
    worst = min(values) if up else max(values)
    return worst if math.isfinite(worst) else None


def _history(ctx: Context) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for r in ctx.metrics:
        if number(r.get("fivecat_passed")):
            out[r["step"]] = {"source": "training", "passed": int(r["fivecat_passed"]),
                              "score": r.get("fivecat_score"),
                              **{g: r.get(f"fivecat_{g}") for g in GATES}}
    for d in fivecat_results(ctx.exp):
        if not d["_judged_as_other"]:
            out[d["step"]] = {"source": "`backlm 5cat`", "passed": d.get("gates_passed"),
                              "score": d.get("score"),
                              **{g: _worst(d.get("rows") or [], g) for g in GATES}}
    return dict(sorted(out.items()))


def _thresholds(latest: dict[str, Any] | None) -> dict[str, float]:
    from dataclasses import asdict

    from backlm.fivecat.spec import Thresholds

    th = {**asdict(Thresholds()), **((latest or {}).get("thresholds") or {})}
    return {"A": th["offset_margin"], "B": th["direction_margin"], "C": -th["context_drop"],
            "D": th["rollout_ratio"], "E": th["generalisation_gap"]}


def fivecat_section(ctx: Context) -> list[str]:
    """The latest 5CAT table (per marker for bidirectional) and its history over steps."""
    lines = ["## 5CAT", ""]
    latest, history = latest_fivecat(ctx.exp), _history(ctx)
    if latest is None and not history:
        return lines + ctx.absent(f"No 5CAT results: run `backlm 5cat {ctx.exp.id}` (or "
                                  "train with `--set fivecat.every=N` to check during "
                                  "training)")
    if latest is None:
        lines += ctx.absent(f"No saved 5CAT table (only in-training figures below): run "
                            f"`backlm 5cat {ctx.exp.id}` for the full table")
    else:
        lines += _fivecat_table(latest)
    others = [d for d in fivecat_results(ctx.exp) if d["_judged_as_other"]]
    if others:
        lines += ["Also judged as another direction than declared (`backlm 5cat --direction`): "
                  + "; ".join(f"step {d['step']} as {d.get('direction')}: "
                              f"{fmt(d.get('gates_passed'))}/5" for d in others) + ".", ""]
    if history:
        lines += ["### History", ""]
        lines += table(["step", "source", "passed", *GATES, "score"],
                       [(s, h["source"], f"{fmt(h['passed'])}/5", *(h[g] for g in GATES),
                         h["score"]) for s, h in history.items()])
        th = _thresholds(latest)
        gates = {g: (*GATE_AXES[g], [("worst value", list(history),
                                      [h[g] for h in history.values()])], th[g])
                 for g in GATES}
        lines += ctx.image("fivecat_history.png", "5CAT gates over training",
                           figs.gate_history, gates)
    return lines


def _fivecat_table(d: dict[str, Any]) -> list[str]:
    verdict = "PASS" if d.get("passed") else "FAIL"
    lines = [f"Latest result: step {d['step']} ({d.get('phase', '?')}), judged as "
             f"**{d.get('direction', '?')}**: **{d.get('gates_passed', '?')}/"
             f"{d.get('gates_total', 5)} gates passed — {verdict}**; score (0.8·B + 0.2·D) "
             f"{fmt(d.get('score'))}.", ""]
    if d.get("inverted"):
        lines += ["**DIRECTION INVERTED**: the model scores text better in the opposite order "
                  "than it declares.", ""]
    gates = d.get("gates") or {}
    lines += table(["gate", "check", "passed"],
                   [(g, (gates.get(g) or {}).get("name", ""), (gates.get(g) or {}).get("passed"))
                    for g in GATES])
    rows = d.get("rows") or []
    with_marker = any(r.get("marker") for r in rows)
    headers = ["gate", "figure", "set", *(["marker"] if with_marker else []), "value",
               "passes when", "result", "detail"]
    lines += table(headers, [
        (r.get("gate"), r.get("figure"), r.get("split"),
         *([r.get("marker") or "-"] if with_marker else []), r.get("value"),
         f"{r.get('op', '')} {fmt(r.get('threshold'))}", "pass" if r.get("passed") else "FAIL",
         r.get("detail", "")) for r in rows])
    return lines + [f"- {w}" for w in d.get("warnings") or []] + (
        [""] if d.get("warnings") else [])


# --- evaluations ----------------------------------------------------------------------------


def evaluation_section(ctx: Context) -> list[str]:
    """Per phase: native vs cross direction per task, the language-modelling matrix, and every
    summary number per task and evaluated order."""
    from backlm.evaluation.runner import EvalReport, TaskResult, direction_rows, lm_matrix

    lines = ["## Evaluations", ""]
    if not ctx.evals:
        return lines + ctx.absent(f"No evaluations yet: run `backlm eval {ctx.exp.id}`")
    for phase in dict.fromkeys(e.get("phase", "?") for e in ctx.evals):
        evs = [e for e in ctx.evals if e.get("phase", "?") == phase]
        # the result files' names, parsed here where they are read
        model = Direction.parse(evs[0].get("model_direction") or ctx.direction)
        orders = [o for o in ORDERS if any(e["direction"] == o for e in evs)]
        report = EvalReport(ctx.exp, phase, max(e.get("step", 0) for e in evs), model, orders,
                            [TaskResult(e["task"], Direction.parse(e["direction"]),
                                        bool(e.get("native")), e.get("summary") or {}, Path())
                             for e in evs])
        lines += [f"### Phase {phase} (model direction {model}; * marks a native order)", ""]
        lines += table(["task", "metric", *(o + (" *" if _native(evs, o) else "")
                                            for o in orders), "native", "cross",
                        "gap (native − cross)"],
                       [(r["task"], r["metric"], *(r["scores"].get(o) for o in orders),
                         r["native"], r["cross"], r["gap"]) for r in direction_rows(report)])
        lm = lm_matrix(report)
        if lm:
            lines += ["Language modelling (CE in nats/token, bits per byte):", ""]
            lines += table(["split", "order", "native", "CE", "bpb"],
                           [(r["split"], r["direction"], r["native"], r["loss"], r["bpb"])
                            for r in lm])
        lines += table(["task", "order", "native", "step", "summary"], [
            (e["task"], e["direction"], e.get("native"), e.get("step"),
             ", ".join(f"{k} {fmt(v)}" for k, v in (e.get("summary") or {}).items()
                       if number(v) and k != "score")) for e in evs])
    return lines


def _native(evs: list[dict[str, Any]], order: Direction) -> bool:
    return any(e["direction"] == order and e.get("native") for e in evs)


def read_evaluations(exp: Experiment) -> list[dict[str, Any]]:
    """Every ``backlm eval`` result file of the experiment (all phases), parsed."""
    import json

    root = exp.evaluations_root
    out = []
    for path in sorted(root.glob("*/*/*.json")) if root.is_dir() else []:
        if path.parent.name == FIVECAT:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and {"task", "direction"} <= data.keys():
            out.append(data)
    return out


# --- the reversal probe -----------------------------------------------------------------------


def _interval(value: Any) -> str:
    v = value if isinstance(value, dict) else {}
    if not number(v.get("value")):
        return "–"
    span = f" [{v['lo']:.2f}, {v['hi']:.2f}]" if number(v.get("lo")) and number(v.get("hi")) \
        else ""
    return f"{v['value']:.3f}{span}"


def reversal_section(ctx: Context) -> list[str]:
    """The stored ``backlm probe reversal`` of each phase: one row per probe (flow, phrasing,
    order) with taught facts against never-taught controls, and its figure."""
    import json

    lines: list[str] = []
    for path in ctx.exp.reversal_results():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("probes"), list):
            continue
        chance = data.get("chance") or {}
        lines += [f"## Reversal probe (phase {data.get('phase')}, step {data.get('step')})", "",
                  f"{data.get('facts')} taught facts, {data.get('controls')} never-taught "
                  f"controls, K={data.get('k')} candidates (chance: MRR "
                  f"{fmt(chance.get('mrr'))}, top-1 {fmt(chance.get('top1'))}); 95 % bootstrap "
                  "intervals over facts.", ""]
        body = []
        for e in data["probes"]:
            s = {k: (v or {}).get("summary") or {} for k, v in (e.get("splits") or {}).items()}
            f, c = s.get("facts", {}), s.get("controls", {})
            body.append((e.get("flow"), e.get("phrasing"), e.get("order"), _interval(f.get("mrr")),
                         _interval(c.get("mrr")), _interval(f.get("em")),
                         _interval(c.get("em"))))
        lines += table(["flow", "phrasing", "order", "MRR facts", "MRR controls", "EM facts",
                        "EM controls"], body)
        png = ctx.exp.reversal_path(data.get("phase"), figure=True)
        if png.is_file():
            lines += [f"![reversal probe]({png.relative_to(ctx.exp.path).as_posix()})", ""]
    return lines
