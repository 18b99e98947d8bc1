"""The measurements behind 5CAT's five gates, batched over the rows of a probe.

Every figure is computed in the model's declared order on the rows of a
:class:`~backlm.fivecat.samples.Probe`; nothing here knows what a direction is. Log-probs are
natural logs, CE is nats per target.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from backlm.fivecat.samples import Probe
from backlm.fivecat.spec import Samples
from backlm.missing import MISSING, mean_or_missing
from backlm.model import IGNORE_INDEX
from backlm.model.decode import GREEDY, Decoder, sample_steps

OFFSETS = (-3, -2, -1, 0, 1, 2, 3)
# Gate D divides by at least this teacher-forced accuracy: a model that predicts almost nothing
# (untrained, or fed text in the wrong order) cannot pass on a handful of lucky matches.
MIN_TF_ACC = 0.1


@dataclass
class ProbeFigures:
    """Everything measured on one probe (one held-out set, one marker)."""

    split: str
    marker: str | None
    rows: int
    length: int
    offset_logp: dict[int, float]  # gate A: mean logp of the token at offset k
    offset_margin: float
    ce: float  # declared order
    ce_opposite: float
    direction_margin: float  # gate B: (CE opposite − CE declared) / CE declared
    ce_wrong_marker: float | None
    marker_margin: float | None  # gate B, bidirectional: (CE wrong marker − CE) / CE
    context_shuffled: float  # gate C: change of mean logp of the last K targets
    context_reversed: float
    rollout_match: float  # gate D
    teacher_forced_acc: float
    rollout_ratio: float
    # per-target predictive entropy and CE of the declared rows, for gate E
    entropy: Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    token_ce: Tensor = field(repr=False, default_factory=lambda: torch.empty(0))


def _targets(x: Tensor, first: int) -> Tensor:
    """Next-token targets of rows ``x``, ignored before position ``first`` (BOS, marker)."""
    y = x[:, 1:].clone()
    y[:, : first - 1] = IGNORE_INDEX
    return y


def row_ce(model, rows: list[list[int]], first: int, chunk: int, autocast) -> Tensor:
    """Per-target CE ``(N, T-1)`` of ``rows`` (0 at ignored targets), ``chunk`` rows a pass."""
    device = model.lm_head.weight.device
    x = torch.tensor(rows, dtype=torch.long, device=device)
    y = _targets(x, first)
    out = []
    for i in range(0, len(rows), chunk):
        with autocast():
            out.append(model(x[i:i + chunk, :-1], y[i:i + chunk], loss_reduction="none").float())
    return torch.cat(out)


def declared_pass(model, x: Tensor, first: int, chunk: int, autocast
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Full distributions over the declared rows, reduced chunk by chunk.

    Returns per-target CE, predictive entropy and argmax ``(N, T-1)``, and the summed log-prob
    ``(7,)`` of the tokens at offsets −3..+3 over every position whose seven offsets all fall
    inside the body.
    """
    n, t = x.shape
    ks = torch.tensor(OFFSETS, device=x.device)
    pos = torch.arange(first + 3, t - 3, device=x.device)  # all seven offsets in the body
    ce, ent, top, offsets = [], [], [], torch.zeros(len(OFFSETS), dtype=torch.float64)
    for i in range(0, n, chunk):
        xc = x[i:i + chunk]
        with autocast():
            logits = model.logits(model.hidden(xc))
        logp = torch.log_softmax(logits.float(), dim=-1)
        ce.append(-logp[:, :-1].gather(-1, xc[:, 1:, None]).squeeze(-1))
        ent.append(-(logp[:, :-1].exp() * logp[:, :-1]).sum(-1))
        top.append(logp[:, :-1].argmax(-1))
        if len(pos):
            idx = xc[:, pos[:, None] + ks[None, :]]  # (n, P, 7) token ids at each offset
            offsets += logp[:, pos].gather(-1, idx).sum((0, 1)).double().cpu()
        del logits, logp
    return torch.cat(ce), torch.cat(ent), torch.cat(top), offsets / (n * len(pos)) if n * len(pos) else offsets * MISSING


def rollout_cuts(prefix: int, length: int, horizon: int) -> list[int]:
    """Where gate D's rollouts start, last first: every ``horizon`` tokens back from the end,
    over the last three quarters of the body (the first quarter is too little context)."""
    first = prefix + max(4, (length - prefix) // 4)
    return list(range(length - horizon, first - 1, -horizon))


@torch.no_grad()
def rollout_vs_teacher(model, x: Tensor, top: Tensor, prefix: int, horizon: int, autocast
                       ) -> tuple[float, float]:
    """Gate D: greedy rollout match rate and teacher-forced top-1 accuracy, same targets.

    Many short rollouts per row rather than one long one: after its first miss a rollout
    rarely realigns with the reference, so a long horizon measures compounding and little
    else. One prefill fills a KV cache for the whole rows; each rollout rewinds it to its cut
    and writes its own tokens over the next ``horizon`` positions. Cuts run from the end
    backwards, ``horizon`` apart, so no rollout reads positions an earlier one overwrote.
    """
    n, length = x.shape
    with autocast():  # the decoder picks its step for the dtype it will run in
        decoder = Decoder(model, length, rows=n)
        decoder.prefill(x)
    hits = tf_hits = total = 0
    with one_cpu_thread(x.device), autocast():
        for cut in rollout_cuts(prefix, length, horizon):
            decoder.cache.pos = cut - 1
            # re-feeding x[cut-1] rewrites its own K/V unchanged
            logits = decoder.step(x[:, cut - 1])
            made = torch.stack(list(sample_steps(decoder, logits, horizon, GREEDY)), dim=1)
            ref = x[:, cut:cut + horizon]
            hits += int((made == ref).sum())
            tf_hits += int((top[:, cut - 1:cut - 1 + horizon] == ref).sum())
            total += ref.numel()
    return mean_or_missing(hits, total), mean_or_missing(tf_hits, total)


@contextlib.contextmanager
def one_cpu_thread(device: torch.device):
    """Decode steps on CPU with one thread: their matmuls are a few rows tall, and waking a
    second thread costs more than it saves (5× slower per step on a busy 2-core machine)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _mean(values: Tensor, mask: Tensor) -> float:
    return mean_or_missing(float((values * mask).sum()), float(mask.sum()))


@torch.no_grad()
def measure(model, probe: Probe, samples: Samples, autocast=contextlib.nullcontext
            ) -> ProbeFigures:
    """Gates A–D figures of one probe, plus the per-target statistics gate E bins."""
    device = model.lm_head.weight.device
    chunk, p, k = samples.batch_rows, probe.prefix, samples.ablate_last
    x = torch.tensor(probe.declared, dtype=torch.long, device=device)
    body = (_targets(x, p) != IGNORE_INDEX).float()  # the targets that are document tokens
    ce, ent, top, offsets = declared_pass(model, x, p, chunk, autocast)
    ce_decl = _mean(ce, body)
    wide = 4 * chunk  # CE-only passes never hold full logits: larger batches are cheaper
    ce_opp = _mean(row_ce(model, probe.opposite, p, wide, autocast), body)
    ce_wrong = None
    if probe.wrong_marker is not None:
        ce_wrong = _mean(row_ce(model, probe.wrong_marker, p, wide, autocast), body)
    # gate C: the last K targets, their context ablated (log-prob change = −CE change)
    last = ce[:, -k:].mean()
    shuffled = row_ce(model, probe.shuffled, p, wide, autocast)[:, -k:].mean()
    reversed_ = row_ce(model, probe.reversed, p, wide, autocast)[:, -k:].mean()
    match, tf_acc = rollout_vs_teacher(model, x, top, p, samples.horizon, autocast)
    logps = {kk: float(v) for kk, v in zip(OFFSETS, offsets, strict=True)}
    margin = logps[1] - max(v for kk, v in logps.items() if kk != 1)
    mask = body.bool()
    return ProbeFigures(
        split=probe.split, marker=probe.marker, rows=probe.rows, length=probe.length,
        offset_logp=logps, offset_margin=margin, ce=ce_decl, ce_opposite=ce_opp,
        direction_margin=(ce_opp - ce_decl) / ce_decl,
        ce_wrong_marker=ce_wrong,
        marker_margin=None if ce_wrong is None else (ce_wrong - ce_decl) / ce_decl,
        context_shuffled=float(last - shuffled), context_reversed=float(last - reversed_),
        rollout_match=match, teacher_forced_acc=tf_acc,
        rollout_ratio=match / max(tf_acc, MIN_TF_ACC),
        entropy=ent[mask].cpu(), token_ce=ce[mask].cpu(),
    )


def generalisation(val: ProbeFigures, ood: ProbeFigures, samples: Samples) -> dict:
    """Gate E: CE on OOD vs VAL inside bins of matched predictive entropy.

    Bin edges are quantiles of both sets' entropies pooled; a bin counts when each set has
    ``min_bin_tokens`` targets in it. The gap of a bin is (CE OOD − CE VAL) / CE VAL.
    """
    pooled = torch.cat([val.entropy, ood.entropy]).double()
    qs = torch.linspace(0, 1, samples.entropy_bins + 1, dtype=torch.float64)
    edges = torch.quantile(pooled, qs).tolist()
    ent_a, ent_b = val.entropy.double(), ood.entropy.double()
    bins, gaps = [], []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        last = i == len(edges) - 2  # the top bin includes its upper edge
        a = (ent_a >= lo) & ((ent_a <= hi) if last else (ent_a < hi))
        b = (ent_b >= lo) & ((ent_b <= hi) if last else (ent_b < hi))
        n_a, n_b = int(a.sum()), int(b.sum())
        row = {"entropy_lo": lo, "entropy_hi": hi, "val_tokens": n_a, "ood_tokens": n_b}
        if min(n_a, n_b) >= samples.min_bin_tokens:
            ce_a, ce_b = float(val.token_ce[a].mean()), float(ood.token_ce[b].mean())
            row.update(val_ce=ce_a, ood_ce=ce_b, gap=(ce_b - ce_a) / max(ce_a, 1e-6))
            gaps.append(row["gap"])
        bins.append(row)
    gap = sum(gaps) / len(gaps) if gaps else float("nan")
    return {"marker": val.marker, "reference": val.split, "other": ood.split,
            "gap": gap, "bins_used": len(gaps), "bins": bins}
