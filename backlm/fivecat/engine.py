"""Running 5CAT: probes on VAL and OOD, the five gates judged, the result kept as JSON.

Gates A–D are judged on every held-out set (VAL and OOD) and every marker of a bidirectional
model; gate E compares VAL with OOD per marker. A gate passes when all of its rows pass, and
5CAT passes when all five gates do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backlm import atomic
from backlm.callbacks import Progress
from backlm.direction import Direction
from backlm.errors import UserError
from backlm.fivecat.samples import build_probes, split_files
from backlm.fivecat.spec import FivecatSpec

GATES = {
    "A": "offset sweep", "B": "direction margin", "C": "context ablation", "D": "rollout",
    "E": "generalisation",
}
INVERTED = "DIRECTION INVERTED"


@dataclass
class GateRow:
    """One judged figure: gate, where it was measured, value, threshold and verdict."""

    gate: str
    figure: str
    split: str
    marker: str | None
    value: float
    op: str  # ">=" or "<="
    threshold: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        """Whether the value clears the threshold (NaN never does)."""
        if not math.isfinite(self.value):
            return False
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold


@dataclass
class FivecatResult:
    """The outcome of one 5CAT run."""

    direction: Direction
    rows: list[GateRow]
    probes: list[dict[str, Any]]
    generalisation: list[dict[str, Any]]
    sets: dict[str, Any]
    spec: FivecatSpec
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def gate_passed(self, gate: str) -> bool:
        """Whether every row of ``gate`` passed."""
        rows = [r for r in self.rows if r.gate == gate]
        return bool(rows) and all(r.passed for r in rows)

    @property
    def passed_count(self) -> int:
        """How many of the five gates passed."""
        return sum(self.gate_passed(g) for g in GATES)

    @property
    def passed(self) -> bool:
        """All five gates passed."""
        return self.passed_count == len(GATES)

    def worst(self, gate: str, figure: str | None = None) -> float:
        """The gate's least favourable value (of one ``figure``, if given)."""
        rows = [r for r in self.rows if r.gate == gate and (figure is None or r.figure == figure)]
        if not rows:
            return float("nan")
        higher_is_better = rows[0].op == ">="
        unmeasured = -math.inf if higher_is_better else math.inf  # NaN: as bad as it gets
        values = [r.value if math.isfinite(r.value) else unmeasured for r in rows]
        return min(values) if higher_is_better else max(values)

    @property
    def direction_margin(self) -> float:
        """Gate B's worst order margin (the marker margin not included)."""
        return self.worst("B", "order margin")

    @property
    def inverted(self) -> bool:
        """Some direction or marker margin is below ``inverted_below``: the model reads the
        other way."""
        floor = self.spec.thresholds.inverted_below
        return any(r.gate == "B" and r.value < floor for r in self.rows)

    @property
    def score(self) -> float:
        """0.8·B + 0.2·D with the worst order margin and rollout ratio (best_5cat.json)."""
        return 0.8 * self.direction_margin + 0.2 * self.worst("D")

    def figures(self) -> dict[str, float]:
        """Flat headline numbers for metric loggers (``fivecat_*``)."""
        out = {f"fivecat_{g}": self.worst(g, "order margin" if g == "B" else None)
               for g in GATES}
        if any(r.figure == "marker margin" for r in self.rows):
            out["fivecat_B_marker"] = self.worst("B", "marker margin")
        out["fivecat_passed"] = self.passed_count
        out["fivecat_score"] = self.score
        out["fivecat_inverted"] = int(self.inverted)
        return {k: (v if isinstance(v, int) or math.isfinite(v) else None) for k, v in out.items()}

    def log_values(self) -> dict[str, float]:
        """The headline figures for the research log's ``/eval`` (kind ``5cat``)."""
        return {k.removeprefix("fivecat_"): float(v) for k, v in self.figures().items()
                if v is not None}

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-ready (NaN and infinities become null)."""
        return _clean({
            "direction": self.direction, "passed": self.passed,
            "gates_passed": self.passed_count, "gates_total": len(GATES), "score": self.score,
            "inverted": self.inverted,
            "gates": {g: {"name": n, "passed": self.gate_passed(g)} for g, n in GATES.items()},
            "rows": [dict(dataclasses.asdict(r), passed=r.passed) for r in self.rows],
            "probes": self.probes, "generalisation": self.generalisation, "sets": self.sets,
            "thresholds": dataclasses.asdict(self.spec.thresholds),
            "samples": dataclasses.asdict(self.spec.samples), "spec": self.spec.source,
            "warnings": self.warnings, "seconds": self.seconds,
        })


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def held_out_splits(data_dir: Path) -> tuple[list[str], list[str]]:
    """``(splits to read, warnings)``: VAL and OOD, or VAL and TRAIN when OOD is missing."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist: prepare or import the dataset "
                        "the experiment was trained on (data_dir in its metadata)")
    if not split_files(data_dir, "val"):
        raise UserError(f"no val shards in {data_dir}: 5CAT needs held-out text; run "
                        "`backlm data prepare` or import a val split")
    if split_files(data_dir, "ood"):
        return ["val", "ood"], []
    return ["val", "train"], [
        f"no ood_*.parquet in {data_dir}: gates A–D run on VAL only, and gate E compares VAL "
        "with TRAIN instead of OOD (a weaker test: add an ood split for the real one)"
    ]


def run_fivecat(model, tokenizer, direction: Direction, data_dir: Path,
                spec: FivecatSpec, autocast=contextlib.nullcontext,
                progress: Progress | None = None) -> FivecatResult:
    """Run the five gates on ``model`` (eval mode) as a ``direction`` model; ``progress`` is
    told after each probe is measured (as ``5CAT probes``)."""
    from backlm.fivecat.gates import generalisation, measure

    t0 = time.perf_counter()
    splits, warnings = held_out_splits(data_dir)
    probes, sets = build_probes(data_dir, tokenizer, direction, spec.samples,
                                model.cfg.seq_len, splits)
    figs = []
    for probe in probes:
        figs.append(measure(model, probe, spec.samples, autocast))
        if progress is not None:
            progress("5CAT probes", len(figs), len(probes))
    gens = [generalisation(a, b, spec.samples) for a in figs for b in figs
            if a.split == "val" and b.split == splits[1] and a.marker == b.marker]
    judged = [f for f in figs if f.split in ("val", "ood")]
    rows = judge(judged, gens, spec)
    probe_json = [{k: v for k, v in dataclasses.asdict(f).items()
                   if k not in ("entropy", "token_ce")} for f in figs]
    result = FivecatResult(direction, rows, probe_json, gens, sets, spec, warnings)
    if result.inverted:
        result.warnings.append(inversion_message(result))
    result.seconds = time.perf_counter() - t0
    return result


def inversion_message(result: FivecatResult) -> str:
    """The loud warning for a model that reads the other way than it declares."""
    bad = [r for r in result.rows if r.gate == "B" and r.value < result.spec.thresholds.inverted_below]
    where = ", ".join(f"{r.figure} {r.value:+.3f} on {r.split}"
                      + (f" ({r.marker} marker)" if r.marker else "") for r in bad)
    return (f"{INVERTED}: the model declared {result.direction} scores text better in the "
            f"opposite order ({where}); check the data direction and the checkpoint's meta.json")


def judge(figs: list, gens: list[dict[str, Any]], spec: FivecatSpec) -> list[GateRow]:
    """Turn measured figures into judged rows, gate by gate."""
    th = spec.thresholds
    rows: list[GateRow] = []
    for f in figs:
        where = {"split": f.split, "marker": f.marker}
        curve = " ".join(f"{k:+d}:{v:.2f}" for k, v in f.offset_logp.items())
        rows.append(GateRow("A", "logp(+1) − max other", value=f.offset_margin, op=">=",
                            threshold=th.offset_margin, detail=curve, **where))
        rows.append(GateRow("B", "order margin", value=f.direction_margin, op=">=",
                            threshold=th.direction_margin,
                            detail=f"CE {f.ce:.3f} · opposite order {f.ce_opposite:.3f}", **where))
        if f.marker_margin is not None:
            rows.append(GateRow("B", "marker margin", value=f.marker_margin, op=">=",
                                threshold=th.marker_margin,
                                detail=f"CE wrong marker {f.ce_wrong_marker:.3f}", **where))
        for name, value in (("shuffled", f.context_shuffled), ("reversed", f.context_reversed)):
            rows.append(GateRow("C", f"Δ logp, context {name}", value=value, op="<=",
                                threshold=-th.context_drop,
                                detail=f"last {spec.samples.ablate_last} targets", **where))
        rows.append(GateRow("D", "rollout / teacher-forced", value=f.rollout_ratio, op=">=",
                            threshold=th.rollout_ratio,
                            detail=f"match {f.rollout_match:.3f} · top-1 {f.teacher_forced_acc:.3f}"
                                   f" · {spec.samples.horizon} steps", **where))
    for g in gens:
        rows.append(GateRow("E", "CE gap per entropy bin", split=f"val~{g['other']}",
                            marker=g["marker"], value=g["gap"], op="<=",
                            threshold=th.generalisation_gap,
                            detail=f"{g['bins_used']} of {len(g['bins'])} bins"))
    return rows


def save_result(path: Path, result: FivecatResult, extra: dict[str, Any]) -> Path:
    """Write the result (with ``extra`` fields such as experiment and step) atomically."""
    atomic.write_json(path, {**_clean(extra), **result.to_json()})
    return path
