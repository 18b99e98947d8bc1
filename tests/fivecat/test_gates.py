"""The measurements behind 5CAT's gates."""

from __future__ import annotations

import contextlib
from pathlib import Path


def test_rollout_rewinding_one_kv_cache_equals_fresh_rollouts(forward):
    """Gate D's shared-cache rollouts give exactly what separate full forwards give, and at
    horizon 1 a rollout is teacher forcing."""
    import torch

    from backlm.fivecat import load_spec
    from backlm.fivecat.gates import declared_pass, rollout_cuts, rollout_vs_teacher
    from backlm.fivecat.samples import build_probes
    from backlm.inference import load_model

    lm = load_model(forward, device="cpu")
    spec = load_spec().with_max_samples(6)
    data = Path(lm.exp.metadata()["data_dir"])
    (probe,), _ = build_probes(data, lm.tokenizer, "forward", spec.samples, 64, ["val"])
    x = torch.tensor(probe.declared)
    _, _, top, _ = declared_pass(lm.model, x, probe.prefix, 8, contextlib.nullcontext)
    match, tf = rollout_vs_teacher(lm.model, x, top, probe.prefix, 1, contextlib.nullcontext)
    assert match == tf > 0
    h, hits, total = 4, 0, 0
    match, _ = rollout_vs_teacher(lm.model, x, top, probe.prefix, h, contextlib.nullcontext)
    with torch.no_grad():
        for cut in rollout_cuts(probe.prefix, x.size(1), h):
            seq = x[:, :cut]
            for _ in range(h):
                seq = torch.cat([seq, lm.model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
            hits += int((seq[:, cut:] == x[:, cut:cut + h]).sum())
            total += x[:, cut:cut + h].numel()
    assert match == hits / total
