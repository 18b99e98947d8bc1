"""The research log's content: every group, attribute and cadence of ``{phase}.h5`` written by
a training run, bf16 values, and the per-token slice and activation probe behind them."""

from __future__ import annotations

import json
import math

import numpy as np
import yaml

from tests.helpers import read_h5 as read
from tests.helpers import train_logged as train


def test_file_has_every_group_attribute_and_cadence(home):
    train("bi", "--set", "log.sample_every=3", direction="bidirectional")
    exp = home / "exps" / "bi"
    with read(exp / "base.h5") as f:
        assert f.attrs["schema_version"] == 1 and f.attrs["experiment_id"] == "bi"
        assert f.attrs["phase"] == "base" and f.attrs["direction"] == "bidirectional"
        assert yaml.safe_load(f.attrs["config"]) == yaml.safe_load((exp / "config.yaml").read_text())
        assert {"scalars", "per_token", "gradients", "activations", "attention", "eval",
                "extra"} <= set(f)
        assert list(f["scalars/step"][:]) == list(range(7))
        for name in ("loss", "lr_mult", "grad_norm", "tokens_per_sec", "mfu", "val_loss_forward",
                     "val_loss_backward", "val_bpb_forward", "val_bpb_backward"):
            assert f[f"scalars/{name}"].shape == (7,), name
        assert math.isnan(f["scalars/loss"][0]) and np.isfinite(f["scalars/loss"][1:]).all()
        val = f["scalars/val_loss_backward"][:]
        assert [i for i in range(7) if np.isfinite(val[i])] == [0, 4, 6]  # eval_every=4, last
        assert list(f["per_token/step"][:]) == [2, 4, 6]
        assert f["per_token/loss"].shape == (3, 2, 32) and f["per_token/loss"].dtype == np.float16
        assert f["per_token/pred"].dtype == np.int32 and f["per_token/input"].shape == (3, 2, 32)
        assert f["per_token/position_loss"].shape == (3, 32)
        assert math.isnan(f["per_token/loss"][0, 0, 0])  # the marker's target is ignored
        assert list(f["gradients/step"][:]) == [3, 6] == list(f["activations/step"][:])
        params = [k for k in f["gradients"] if k != "step"]
        assert "wte.weight" in params and "blocks.1.mlp.fc" in params and len(params) == 10
        assert sorted(f["gradients/blocks.0.attn.qkv"]) == ["max_abs", "mean", "norm", "std"]
        assert sorted(k for k in f["activations"] if k != "step") == ["blocks.0", "blocks.1"]
        assert sorted(f["activations/blocks.0"]) == ["max_abs", "mean", "rms", "std"]
        assert (f["activations/blocks.1/rms"][:] > 0).all()
        assert list(f["attention/step"][:]) == [3, 6]  # 6: the per-token slice's forward too
        ent, dist = f["attention/entropy"][:], f["attention/distance"][:]
        assert ent.shape == dist.shape == (2, 2, 2) and ent.dtype == np.float32  # layers, heads
        # a query at position i spreads over at most i+1 keys, at most i tokens back
        assert (ent > 0).all() and (ent < np.log(np.arange(1, 33)).mean()).all()
        assert (dist > 0).all() and (dist <= 31 / 2).all()
        assert dict(f["attention"].attrs) == {"every": 3, "rows": 2, "layers": 2, "heads": 2}
        kinds = {(k, n) for k, n in zip(f["eval/kind"][:], f["eval/name"][:], strict=True)}
        assert (b"val", b"val_bpb_forward") in kinds and list(f["eval/step"][:2]) == [0, 0]
        assert f["per_token"].attrs["every"] == 2 and f["gradients"].attrs["every"] == 3
        for dset in (f["scalars/loss"], f["per_token/loss"]):
            assert dset.compression == "gzip" and dset.chunks and dset.maxshape[0] is None
    samples = [json.loads(x) for x in
               (exp / "notes" / "generation_samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["order"]) for s in samples] == [
        (3, "forward"), (3, "backward"), (6, "forward"), (6, "backward")]


def test_bf16_values_are_stored(home):
    train("bf", "--set", "train.dtype=bf16", "--set", "log.stats_every=2", steps=2)
    with read(home / "exps" / "bf" / "base.h5") as f:
        loss = f["per_token/loss"][0].astype(np.float32)
        scored = f["per_token/target"][0] >= 0  # rows end in padding: ignored, NaN
        assert scored.mean() > 0.8 and np.isfinite(loss[scored]).all()
        assert np.isnan(loss[~scored]).all() and 1.0 < np.nanmean(loss) < 10.0
        assert np.isfinite(f["activations/blocks.0/rms"][:]).all()
        assert f["activations/blocks.0/max_abs"][0] > 0


def test_per_token_slice_matches_the_model_loss_in_fp32_and_bf16():
    import contextlib

    import torch

    from backlm.config import ModelConfig
    from backlm.logs.research import ActivationProbe, per_token_slice, to_numpy
    from backlm.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(depth=2, width=64, head_dim=32, vocab_size=97, seq_len=16))
    x = torch.randint(0, 97, (2, 16))
    y = torch.randint(0, 97, (2, 16))
    y[0, :3] = -1
    out = per_token_slice(model, x, y, contextlib.nullcontext(), chunk=7)
    ref = model(x, y, loss_reduction="none").detach().numpy()
    assert np.isnan(out["loss"][0, :3]).all()
    np.testing.assert_allclose(out["loss"][y >= 0], ref[(y >= 0).numpy()], rtol=2e-3, atol=2e-3)
    assert out["pred"].dtype == np.int32 and (out["input"] == x.numpy()).all()
    np.testing.assert_allclose(out["position_loss"][5], ref[:, 5].mean(), rtol=2e-3)
    probe = ActivationProbe(list(model.blocks))
    probe.arm()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf = per_token_slice(model, x, y, contextlib.nullcontext())
        model(x, y)
    stats = probe.disarm()
    assert not probe.armed and not model.blocks[0]._forward_hooks  # hooks really removed
    assert np.isfinite(bf["loss"][1]).all() and bf["loss"].dtype == np.float16
    assert all(math.isfinite(v) for s in stats.values() for v in s.values())
    assert to_numpy(torch.tensor([1.5], dtype=torch.bfloat16), "float32").tolist() == [1.5]
