"""The validation pass of a run: everything is checked before anything is written.

:func:`check_config` judges a resolved config on its own (ranges, shapes, names the run will
look up); :func:`plan_new_run` adds what depends on the machine and the files (device, memory,
writable locations, the id, data and tokenizer); :func:`plan_resume` does the same for
``--resume`` and trusts no file of the experiment (config, metadata, checkpoint, tokenizer must
agree with each other). Nothing here writes; :mod:`backlm.train.launch` acts on the plan.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from backlm.config import RunConfig
from backlm.direction import Direction
from backlm.errors import UserError
from backlm.experiment import folder as xp
from backlm.paths import DEFAULT_DATASET, check_writable, dataset_dir

# Statuses after which a run has nothing left to do (DESIGN.md §2 metadata).
FINISHED = ("finished", "early stop", "target reached")


def monitors(direction: Direction, phase: str = "base") -> list[str]:
    """The validation metrics a run of ``direction`` measures (what early stopping may watch)."""
    from backlm.direction import eval_orders
    from backlm.train.phases import eval_monitors

    names = ["val_loss", "val_bpb"]
    for label, _ in eval_orders(direction):
        if label:
            names += [f"val_loss_{label}", f"val_bpb_{label}"]
    return names + eval_monitors(phase, direction)


def check_config(cfg: RunConfig, world: int = 1) -> None:
    """Every range, shape and name of ``cfg`` that can be judged without the machine."""
    from backlm.config import check_ranges
    from backlm.train.cost import price
    from backlm.train.phases import plan_streams

    check_ranges(cfg)  # the ranges live beside the fields
    m = cfg.model
    if m.model_dim % 2 or m.model_dim % m.head_dim:
        raise UserError(f"model width {m.model_dim} is not a multiple of model.head_dim "
                        f"{m.head_dim}: set model.width to a multiple of it (or change head_dim)")
    from backlm.tokenizer import check_vocab_size

    try:
        check_vocab_size(m.vocab_size)
    except UserError as exc:
        raise UserError(f"model.vocab_size: {exc}") from None
    plan_streams(cfg, world)
    if cfg.early_stop.monitor not in monitors(cfg.data.direction, cfg.phase):
        raise UserError(f"early_stop.monitor {cfg.early_stop.monitor!r} is not measured by a "
                        f"{cfg.data.direction} run: choose one of "
                        f"{', '.join(monitors(cfg.data.direction, cfg.phase))}")
    if cfg.fivecat.spec:
        from backlm.fivecat.spec import load_spec

        try:
            load_spec(cfg.fivecat.spec)
        except UserError as exc:
            raise UserError(f"fivecat.spec: {exc}") from None
    price(cfg)


def check_device(cfg: RunConfig, world: int = 1) -> str | None:
    """The device exists and the run fits in its memory: the estimate of
    :func:`backlm.train.cost.memory_estimate` against what the device has free now.

    On CPU the estimate was checked against measured growth (BENCHMARKS.md), so a run that does
    not fit is refused. On a GPU only the parts that are certain (weights, gradients, optimizer
    state) refuse; activations there are unmeasured, so exceeding on them is a warning,
    returned for the caller to show.
    """
    from backlm.hardware import available_memory, resolve_device
    from backlm.train.cost import memory_estimate

    dev = resolve_device(cfg.train.device, cfg.train.dtype)
    need = memory_estimate(cfg, world, "cuda" if dev.is_cuda else "cpu")
    have = available_memory(dev.device)
    if have is None or need.total <= have:
        return None
    gib, state = 2**30, need.weights + need.grads + need.optimizer
    what = (f"the run needs about {need.total / gib:,.1f} GiB on {dev.name} (weights, gradients "
            f"and optimizer {state / gib:,.1f} GiB, activations {need.activations / gib:,.1f} "
            f"GiB) but {have / gib:,.1f} GiB is free")
    fix = ("lower model.depth, model.width, train.device_batch_size or model.seq_len (see "
           "--estimate-only)")
    if dev.is_cuda and state <= have:
        return f"warning: {what}; if it runs out of memory, {fix}"
    raise UserError(f"{what}: {fix}")


@dataclass(frozen=True)
class NewRun:
    """What a new run will create: its id, dataset folder, and whether the data must be made."""

    exp_id: str
    data_dir: Path
    prepare_data: bool
    warnings: tuple[str, ...] = ()  # to show before training (e.g. a tight GPU memory fit)


def plan_new_run(cfg: RunConfig, root: Path, world: int = 1,
                 explicit: Collection[str] = ()) -> NewRun:
    """Validate a new run completely before anything is written.

    ``explicit`` names the keys the user set on the command line (``--set``, flags): such a
    value the run would not use (a vocabulary the dataset's tokenizer replaces, a mix a
    one-direction run ignores) is refused rather than dropped.
    """
    from backlm.data.vocab import existing_tokenizer

    check_config(cfg, world)
    if cfg.phase != "base":
        from backlm.train.phases import article

        raise UserError(f"{article(cfg.phase)} {cfg.phase} run starts from a parent checkpoint: use `backlm branch "
                        f"{cfg.phase} --parent EXP`, or a chain such as --phase base,{cfg.phase}")
    if "id" in explicit and not cfg.id.strip():
        raise UserError("--id is empty: give a name, or leave --id out for the default")
    if "data.mix" in explicit and cfg.data.direction is not Direction.BIDIRECTIONAL:
        raise UserError(f"data.mix only applies to bidirectional runs; drop --set data.mix "
                        f"for a {cfg.data.direction} run")
    exp_id = xp.check_id(cfg.id or xp.new_id(cfg.phase, cfg.data.direction, cfg.model.depth))
    check_writable(Path(root), "the experiments folder",
                   "choose another with --experiments-dir or BACKLM_EXPERIMENTS")
    xp.check_free_id(Path(root), exp_id)
    folder = dataset_dir(cfg.data.dataset)
    prepare = not any(folder.glob("train_*.parquet"))
    if prepare and cfg.data.dataset != DEFAULT_DATASET:
        name = cfg.data.dataset  # the commands name it: without --dataset they fill another
        raise UserError(f"dataset {name!r} has no train shards in {folder}: import your text "
                        f"with `backlm data import FILE... --dataset {name}` or fetch a web "
                        f"sample with `backlm data download --dataset {name}`")
    if prepare:
        check_writable(folder, "the data folder (BACKLM_HOME)",
                       "set BACKLM_HOME to a writable folder")
    tokenizer = None if prepare else existing_tokenizer(folder)
    if tokenizer is not None and tokenizer.vocab_size != cfg.model.vocab_size:
        if "model.vocab_size" in explicit:
            raise UserError(
                f"model.vocab_size={cfg.model.vocab_size} but dataset {cfg.data.dataset!r} has a "
                f"{tokenizer.vocab_size}-token tokenizer, which the model must use: drop the "
                f"override (or set model.vocab_size={tokenizer.vocab_size})")
        cfg.model.vocab_size = tokenizer.vocab_size  # a preset's size yields to the data's
    warning = check_device(cfg, world)
    return NewRun(exp_id, folder, prepare, (warning,) if warning else ())


@dataclass(frozen=True)
class Resume:
    """A validated ``--resume``: the experiment, its config, and what the resume will do."""

    exp: xp.Experiment
    cfg: RunConfig
    step: int  # the step of the latest checkpoint (0: none yet)
    status: str
    extend_to: int | None  # --max-steps that changes the run's length

    @property
    def finished(self) -> bool:
        """Whether the run is over and no extension was asked for: nothing to do."""
        return self.status in FINISHED and self.extend_to is None


def plan_resume(ref: str, root: Path, max_steps: int | None = None) -> Resume:
    """Validate ``--resume ref`` without writing: every file of the experiment must agree."""
    from backlm.experiment import checkpoint as ckpt
    from backlm.experiment import compat

    exp = xp.find(ref, root)
    meta = exp.metadata()
    exp.lock().check_free()
    cfg = exp.config()
    try:
        check_config(cfg)
    except UserError as exc:
        raise UserError(f"{exp.config_path} is not a valid run config ({exc}); restore the file "
                        "the run was created with") from None
    folder = exp.latest_checkpoint()
    step = 0
    if folder is not None:
        # the weights with their checksum; the optimizer's files without their tensors (the
        # trainer loads those once), so a resume is judged before --max-steps writes anything
        _, _, cmeta = ckpt.load(folder, with_optimizer=False)
        ckpt.validate_meta(cmeta, folder, resume=True)
        ckpt.check_optimizer_files(folder)
        step = int(cmeta["step"])
        compat.check_run_config(cfg, cmeta, folder, exp.config_path)
        compat.check_tokenizer(exp.tokenizer_dir, cfg.model.vocab_size, cmeta, folder)
    else:
        compat.check_tokenizer(exp.tokenizer_dir, cfg.model.vocab_size, None, None)
    status = str(meta.get("status") or "?")
    extend_to = None
    if max_steps is not None:
        if max_steps <= step:
            raise UserError(f"experiment {exp.id} is already at step {step}: --max-steps must "
                            f"be larger to extend it")
        if max_steps != cfg.train.max_steps:
            extend_to = max_steps
    return Resume(exp, cfg, step, status, extend_to)
