"""``SWEEP.md``: the sweep's comparison for people, through the one Markdown writer
(:func:`backlm.render.table`): the grid, the gap per size (each seed, the t-interval over
seeds, the pooled document interval), the bidirectional model's per-order cost, 5CAT of every
member, and a link to the full ``backlm compare`` report."""

from __future__ import annotations

from typing import Any

from backlm.direction import Direction
from backlm.missing import is_missing


def _f(value: Any, signed: bool = True) -> str:
    if value is None or is_missing(value):
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _ci(iv: Any) -> str:
    if iv is None or iv.lo is None or iv.hi is None:
        return "—"
    return f"[{_f(iv.lo)}, {_f(iv.hi)}]"


def _params(value: Any) -> str:
    from backlm.render import readable

    return "—" if not value else readable(float(value))


def _interval_rows(rows: list[Any], label: Any) -> list[list[str]]:
    out = []
    for r in rows:
        seeds = " · ".join(f"s{s} {_f(iv.value)}" for s, iv in sorted(r.per_seed.items()))
        mean = r.seeds.value if r.seeds is not None else (
            r.pooled.value if r.pooled is not None else None)
        out.append([label(r), f"d{r.depth}", _params(r.params), seeds, f"**{_f(mean)}**",
                    _ci(r.seeds), _ci(r.pooled)])
    return out


HEADER = ["", "depth", "parameters", "per seed", "mean", "95% t-interval over seeds",
          "95% CI, documents pooled"]


def markdown(result: Any, figure: bool) -> str:
    """The whole ``SWEEP.md``."""
    from backlm.render import table

    g, c = result.grid, result.comparison
    lines = [f"# Sweep {g.sweep_id}", "",
             f"directions {', '.join(map(str, g.directions))} · depths "
             f"{', '.join(map(str, g.depths))} · seeds {', '.join(map(str, g.seeds))} · preset "
             f"{g.preset or '(defaults)'} · phases {','.join(g.phases)} · steps "
             f"{g.max_steps or '(preset)'}" + (f" · --set {' '.join(g.overrides)}"
                                                if g.overrides else ""), "",
             f"Compared: {len(c.members)} members. Full report (curves, transfer matrix, "
             f"per-document gaps, notes): [comparison/COMPARISON.md]"
             f"(comparison/COMPARISON.md).", ""]
    if result.missing:
        lines += [f"Not finished yet, left out: {', '.join(result.missing)}.", ""]
    lines += ["## Forward − backward gap per size", "",
              "gap = bpb of the forward reading − bpb of the backward reading over the same "
              "held-out val documents (negative: forward reads better). Members with equal "
              "seeds read the same training tokens in the same order, so a pair differs by "
              "direction alone. Per seed: paired bootstrap over documents; across seeds: the "
              "mean with a t-interval over seeds, and the documents pooled under one draw in "
              "every seed.", ""]
    kinds = {"models": "forward vs backward",
             Direction.BIDIRECTIONAL: "bidirectional (own orders)"}
    rows = _interval_rows(result.sizes, lambda r: kinds.get(r.kind, r.kind))
    lines += [*table(HEADER, rows), ""] if rows else ["No gap yet: it needs a finished "
                                                      "forward and backward member of a size.", ""]
    if figure:
        lines += ["![gap against parameters](scaling.png)", ""]
    lines += ["## Bidirectional model: cost per order", "",
              "bpb of the bidirectional model in one order − bpb of the dedicated model of "
              "that order (same depth and seed, the same number of training tokens, so the "
              "bidirectional model saw each order about half as often). Positive: the shared "
              "model pays that much per byte.", ""]
    rows = _interval_rows(result.costs, lambda r: f"{r.order} order")
    lines += [*table(HEADER, rows), ""] if rows else ["No bidirectional member with a "
                                                      "dedicated model of the same size and "
                                                      "seed.", ""]
    lines += ["## 5CAT of every member", ""]
    five = [[r["experiment"], str(r["direction"]), f"d{r['depth']}", str(r["seed"]),
             "—" if r["passed"] is None else f"{r['passed']}/{r['total']}",
             "DIRECTION INVERTED" if r["inverted"] else "passed" if r["ok"] else
             "—" if r["passed"] is None else "some gates failed"] for r in result.fivecat]
    lines += [*table(["experiment", "direction", "depth", "seed", "gates", "verdict"], five), ""]
    if c.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in c.notes), ""]
    return "\n".join(lines)
