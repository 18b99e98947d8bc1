"""The hub model folder of one experiment checkpoint, as ``backlm upload`` stages it::

    model.safetensors   the weights under backlm's names (``format: pt``); the header's
                        __metadata__ holds the direction, the model config (JSON), phase, step,
                        tokenizer sha256, backlm version and how to prompt, so the file alone
                        says how to use it
    backlm_tokenizer.json   the experiment's tokenizer, backlm's format
    config.json, generation_config.json, tokenizer.json, tokenizer_config.json,
    special_tokens_map.json, configuration_backlm.py, modeling_backlm.py
                        what transformers loads without backlm (:mod:`backlm.hub.hf_export`)
    metadata.json       what the experiment's metadata says of the run (no host, paths, pid or
                        command line), its lineage and training summary
    evaluations/<phase>/<order>/<task>.json        summaries of that step's evaluations
    evaluations/<phase>/fivecat/step_XXXXXX.json   5CAT of that step
    README.md           the model card (:mod:`backlm.hub.card`)

No token or secret reaches it: only the fields named here are copied.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backlm import __version__, atomic
from backlm.experiment import checkpoint as ckpt
from backlm.experiment.folder import Experiment, utcnow
from backlm.hub import card as model_card

# The experiment metadata a hub folder keeps: host, platform, paths, pid and the command line
# stay home.
METADATA_KEYS = ("id", "name", "description", "phase", "direction", "depth", "parent",
                 "created", "finished", "status", "git_commit", "python", "torch", "cuda",
                 "device", "dtype", "world_size", "results")
LINK_KEYS = ("parent_id", "step", "weights_sha256", "parent_phase", "parent_direction",
             "direction", "direction_change", "tokenizer_sha256", "chain_ids", "init_lr_frac")
SUMMARY_KEYS = ("stop_reason", "steps", "max_steps", "tokens", "val_loss", "val_bpb",
                "first_val_bpb", "device", "gpus", "gpu_hours", "usd", "wall_seconds",
                "tokens_per_sec", "sessions")
FIVECAT_KEYS = ("experiment", "step", "phase", "checkpoint_direction", "direction", "passed",
                "gates_passed", "gates_total", "score", "inverted", "gates", "rows",
                "thresholds", "samples", "warnings")
CARD = "README.md"


@dataclass
class FolderSpec:
    """What to stage: a checked checkpoint of an experiment, for one hub repo."""

    exp: Experiment
    repo_id: str | None  # None: a local export (``backlm export``), for no hub repo
    checkpoint: Path
    step: int
    meta: dict[str, Any]  # the checkpoint's meta.json, checked
    tokenizer: Any  # the experiment's tokenizer, checked against the checkpoint
    license: str
    endpoint: str  # the hub it goes to (a parent pushed there is the card's base model)
    location: Path | None = None  # a local export's final folder (the card loads from it)

    @property
    def direction(self) -> str:
        return str(self.meta["direction"])

    @property
    def phase(self) -> str:
        return str(self.meta.get("phase") or self.exp.phase)


@dataclass
class Staged:
    """A written folder: its files (path in the repo, bytes), the card, and the evaluations
    left out because they are of another step."""

    files: list[tuple[str, int]]
    card: str
    skipped: list[str]


def is_old_folder(folder: Path) -> bool:
    """Whether ``folder`` is a model folder an older backlm staged or exported (before the
    ownership marker, :data:`backlm.atomic.OWNED`): the weights, tokenizer, card and metadata,
    and only files :func:`write_folder` writes, by name."""
    from backlm.experiment.folder import Experiment
    from backlm.hub.hf_export import HF_FILES
    from backlm.tokenizer import TOKENIZER_FILE

    layout = Experiment(folder)  # the same names the staged folder copies from an experiment
    needed = {ckpt.MODEL_FILE, TOKENIZER_FILE, CARD, layout.metadata_path.name}
    names = {*needed, *HF_FILES}
    entries = list(folder.iterdir())
    return needed <= {p.name for p in entries} and all(
        not p.is_symlink() and ((p.is_file() and p.name in names)
                                or (p.is_dir() and p == layout.evaluations_root)) for p in entries)


def write_folder(spec: FolderSpec, target: Path) -> Staged:
    """Write the hub folder into ``target`` (created, or an empty folder made for it)."""
    from backlm.experiment.compat import tokenizer_hash
    from backlm.hub import hf_export

    exp = spec.exp
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        raise FileExistsError(f"{target} is not empty")
    tok_sha = tokenizer_hash(spec.tokenizer)
    specials = dict(spec.tokenizer.specials)
    params = _write_weights(spec, target / ckpt.MODEL_FILE, tok_sha, specials)
    hf_export.write(target, spec.tokenizer, spec.meta["direction"], spec.phase, spec.step,
                    spec.meta["model_config"],
                    {"special_tokens": specials, "tokenizer_sha256": tok_sha})
    spec.tokenizer.save(target)
    link, summary = exp.parent_link() or {}, exp.training_summary() or {}
    atomic.write_json(target / exp.metadata_path.name, {
        **{k: v for k, v in exp.metadata().items() if k in METADATA_KEYS},
        "lineage": {k: link[k] for k in LINK_KEYS if k in link} or None,
        "training": {k: summary[k] for k in SUMMARY_KEYS if k in summary},
        ("upload" if spec.repo_id else "export"): {
                   "repo_id": spec.repo_id, "step": spec.step, "phase": spec.phase,
                   "checkpoint_sha256": spec.meta.get("model_sha256"), "staged": utcnow(),
                   "backlm_version": __version__}})
    evaluations, skipped = _stage_evaluations(spec, target)
    info = model_card.CardInfo(
        repo_id=spec.repo_id, experiment=exp.id, direction=spec.direction, phase=spec.phase,
        step=spec.step, model_config=_shape(spec.meta["model_config"]),
        special_tokens=specials, tokenizer_sha256=tok_sha,
        weights_sha256=ckpt.sha256_file(target / ckpt.MODEL_FILE), parameters=params,
        version=__version__, license=spec.license, tokens=spec.meta.get("tokens"),
        base_model=base_model(spec), endpoint=spec.endpoint,
        lineage=[e.id for e in exp.lineage()],
        parent={k: link.get(k) for k in ("parent_id", "step", "parent_phase")} if link else None,
        training={"dataset": _dataset(exp), **{k: summary.get(k) for k in SUMMARY_KEYS}},
        evaluations=evaluations, fivecat=_stage_fivecat(spec, target), files=_listing(target),
        location=str(spec.location) if spec.location else None)
    card = model_card.render(info)
    atomic.write_text(target / CARD, card)
    return Staged(_listing(target), card, skipped)


def _write_weights(spec: FolderSpec, path: Path, tok_sha: str, specials: dict) -> int:
    """Re-write the checkpoint's tensors with a header that says how to use them; the number
    of parameters. The bytes depend only on the checkpoint (fixed key and tensor order), so
    staging it again gives the same file and a re-push uploads no weights."""
    from safetensors.torch import load_file

    from backlm.experiment import weights

    tensors = load_file(str(spec.checkpoint / ckpt.MODEL_FILE))
    header = {
        **weights.checkpoint_header({**spec.meta, "phase": spec.phase, "step": spec.step,
                                     "tokenizer": {"sha256": tok_sha}}),
        "special_tokens": json.dumps(specials), "usage": model_card.usage_line(spec.direction),
        "experiment": spec.exp.id, "checkpoint_sha256": str(spec.meta.get("model_sha256")),
    }
    weights.write(path, tensors, header)
    return sum(t.numel() for t in tensors.values())


def _shape(model_config: dict[str, Any]) -> dict[str, Any]:
    """The model config with its derived width and head count."""
    from backlm.config import ModelConfig, from_dict

    cfg = from_dict(ModelConfig, model_config)
    return {**model_config, "width": cfg.model_dim, "heads": cfg.n_heads}


def _stage_evaluations(spec: FolderSpec, target: Path) -> tuple[list[dict], list[str]]:
    """Copy the summaries of the uploaded step's evaluations (per-example records stay
    home); the others are named as skipped."""
    staged, skipped = [], []
    for path in spec.exp.evaluation_results(spec.phase):
        rel = path.relative_to(spec.exp.path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            skipped.append(f"{rel} (unreadable)")
            continue
        if not isinstance(data, dict) or data.get("step") != spec.step:
            skipped.append(f"{rel} (step {data.get('step') if isinstance(data, dict) else '?'})")
            continue
        data = {k: v for k, v in data.items() if k != "records"}
        atomic.write_json(target / rel, data)
        task, name = str(data.get("task")), _dataset(spec.exp) or "held-out"
        if task == "lm":
            where = {"dataset_type": name, "dataset_name": f"{name} (held-out text)"}
        else:
            where = {"dataset_type": _hub_dataset(task) or task, "dataset_name": task}
        staged.append({**data, **where})
    return staged, skipped


def _stage_fivecat(spec: FolderSpec, target: Path) -> dict[str, Any] | None:
    """Copy the 5CAT result of the uploaded step (its headline fields), if there is one."""
    path = spec.exp.fivecat_path(spec.phase, spec.step)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    data = {k: data[k] for k in FIVECAT_KEYS if k in data}
    atomic.write_json(target / path.relative_to(spec.exp.path), data)
    return data


def _hub_dataset(task: str) -> str | None:
    """The hub dataset id a downloaded task set comes from (``allenai/ai2_arc`` …)."""
    from backlm.data.datasets import DATASETS

    source = DATASETS.get(task)
    m = re.search(r"/datasets/([^/]+/[^/]+)/", source.base_url) if source else None
    return m[1] if m else None


def _dataset(exp: Experiment) -> str | None:
    """The name of the dataset the experiment trained on."""
    folder = exp.metadata().get("data_dir")
    return Path(folder).name if isinstance(folder, str) and folder else None


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size)
                  for p in folder.rglob("*") if p.is_file())


def base_model(spec: FolderSpec) -> str | None:
    """The hub repo of the parent experiment, when it was pushed to this same hub (a local
    experiment id is no hub model id, so the card names none otherwise)."""
    chain = spec.exp.lineage()
    link = spec.exp.parent_link() or {}
    if len(chain) < 2 or chain[-2].id != link.get("parent_id"):
        return None
    pushes = [r for r in chain[-2].hub_uploads()
              if r.get("endpoint") == spec.endpoint and isinstance(r.get("repo_id"), str)]
    return pushes[-1]["repo_id"] if pushes else None
