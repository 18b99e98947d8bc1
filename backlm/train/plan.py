"""The validation pass of a run: everything is checked before anything is written.

:func:`check_config` judges a resolved config on its own (ranges, shapes, names the run will
look up); :func:`plan_new_run` adds what depends on the machine and the files (device, memory,
writable locations, the id, data and tokenizer); :func:`plan_resume` does the same for
``--resume`` and trusts no file of the experiment (config, metadata, checkpoint, tokenizer must
agree with each other). Nothing here writes; :mod:`backlm.train.launch` acts on the plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
                 explicit: Collection[str] = (), memory: bool = True) -> NewRun:
    """Validate a new run completely before anything is written.

    ``explicit`` names the keys the user set on the command line (``--set``, flags): such a
    value the run would not use (a vocabulary the dataset's tokenizer replaces, a mix a
    one-direction run ignores) is refused rather than dropped. ``memory=False`` (an estimate,
    which reports the fit instead) does not refuse a run that does not fit the device.
    """
    from backlm.data.shards import require_kind
    from backlm.data.vocab import existing_tokenizer

    check_config(cfg, world)
    if cfg.phase != "base":
        from backlm.train.phases import article

        raise UserError(f"{article(cfg.phase)} {cfg.phase} run starts from a parent checkpoint: use `backlm branch "
                        f"{cfg.phase} --parent EXP`, or a chain such as --phase base,{cfg.phase}")
    if "id" in explicit and not cfg.id.strip():
        raise UserError("--id is empty: give a name, or leave --id out for the default")
    check_used(cfg, explicit)
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
    if not prepare:
        require_kind(folder, "text", "data.dataset (a base run)")
    tokenizer = None if prepare else existing_tokenizer(folder)
    if tokenizer is not None and tokenizer.vocab_size != cfg.model.vocab_size:
        if "model.vocab_size" in explicit:
            raise UserError(
                f"model.vocab_size={cfg.model.vocab_size} but dataset {cfg.data.dataset!r} has a "
                f"{tokenizer.vocab_size}-token tokenizer, which the model must use: drop the "
                f"override (or set model.vocab_size={tokenizer.vocab_size})")
        cfg.model.vocab_size = tokenizer.vocab_size  # a preset's size yields to the data's
    warning = check_device(cfg, world) if memory else None
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


def check_resume_asked(resume: Resume, overrides: Sequence[str],
                       flags: Mapping[str, Any]) -> None:
    """A resume's options (``--set`` overrides, nested flags) must say what the run already is:
    the first config key they change (:func:`backlm.experiment.identity.differs`; only
    ``train.max_steps``, the extension, may differ) is refused, named, before anything is
    written."""
    from backlm.config import RunConfig, deep_merge, from_dict, parse_overrides, to_dict
    from backlm.experiment.identity import differs, run_identity

    if not overrides and not flags:
        return
    try:
        merged = deep_merge(deep_merge(to_dict(resume.cfg), parse_overrides(list(overrides))),
                            dict(flags))
        asked = from_dict(RunConfig, merged)
    except UserError as exc:
        raise UserError(f"--resume {resume.exp.id}: {exc}") from None
    existing = run_identity(resume.cfg, every_key=True, known_parent=False)
    diff = differs(existing, run_identity(asked, every_key=True, known_parent=False),
                   ignore=("train.max_steps",))
    if diff is not None:
        raise UserError(f"--resume continues {resume.exp.id} as it was configured, but the "
                        f"options change it: {diff}; drop the option (only --max-steps can "
                        "change), or start a new run with another --id")


# Keys only some phases read: the key (or its section) -> those phases.
PHASE_KEYS = {"chat.dataset": ("mid", "sft"), "chat.train_on": ("sft",),
              "chat.text_frac": ("mid",), "rl": ("rl",)}


def check_used(cfg: RunConfig, explicit: Collection[str], phases: Collection[str] = (),
               baseline: RunConfig | None = None) -> None:
    """Refuse a value the user gave (``explicit`` keys) that the run would not read: data.mix
    for a one-direction run; with ``phases`` (the runs the values are for, e.g. a chain's), a
    chat or rl key none of them reads. A value equal to the one the run has anyway
    (``baseline``'s, default the schema's) is no harm and passes."""
    from backlm.config import flatten, to_dict
    from backlm.train.phases import article

    have = flatten(to_dict(cfg))
    default = flatten(to_dict(baseline or RunConfig()))
    for key in sorted(explicit):
        if key not in have or have[key] == default.get(key):
            continue
        if key == "data.mix" and cfg.data.direction is not Direction.BIDIRECTIONAL:
            raise UserError(f"data.mix only applies to bidirectional runs; drop --set "
                            f"data.mix={have[key]} for a {cfg.data.direction} run")
        readers = PHASE_KEYS.get(key) or PHASE_KEYS.get(key.split(".")[0])
        if phases and readers and not set(readers) & set(phases):
            runs = " or ".join(readers)
            what = (f"{article(next(iter(phases)))} {next(iter(phases))} run" if len(phases) == 1
                    else f"the chain {','.join(phases)}")
            raise UserError(f"{key} only applies to {runs} runs; drop --set {key}={have[key]} "
                            f"for {what}")


@dataclass(frozen=True)
class TrainPlan:
    """A validated ``backlm train`` (nothing written): what ``--estimate-only`` reports and
    the run trains."""

    cfg: RunConfig | None  # None: --resume (the experiment's own config)
    phases: tuple[str, ...]
    explicit: frozenset[str]  # dotted keys given on the command line
    launch: Any  # backlm.train.launch.LaunchPlan
    new: NewRun | None = None  # the new base run (None: --resume, or a chain's base exists)


def plan_train(root: Path, *, preset: str | None = None, overrides: Sequence[str] = (),
               flags: dict[str, Any] | None = None, phase: str | None = None,
               resume: str | None = None, resume_changes: dict[str, object] | None = None,
               processes: Any, estimate: bool = False) -> TrainPlan:
    """The one planning pass of ``backlm train``: the config (a ``--set`` that a flag would
    replace refused, :func:`backlm.config.user_layer`), ``--phase``, the process layout, the
    values the run would not use, and the new run itself (:func:`plan_new_run`). The real run
    and ``--estimate-only`` both go through it, so they refuse the same things (the estimate
    reports a run too large for the device's memory instead of refusing it).
    ``processes`` (a :class:`backlm.train.launch.Processes`) plans the process layout;
    ``resume_changes``: options given with ``--resume`` (name -> value, None: not given)."""
    from backlm.config import Flags, explicit_keys, load_config
    from backlm.train.phases import parse_chain

    if resume is not None:
        _refuse_resume_changes(resume, resume_changes or {})
        if estimate:
            raise UserError("--estimate-only plans a new run; it cannot be combined with "
                            "--resume")
        return TrainPlan(None, ("base",), frozenset(), processes.plan("auto"))
    phases = tuple(parse_chain(phase)) if phase is not None else ("base",)
    flags = Flags(flags, getattr(flags, "labels", None), getattr(flags, "fixes", None))
    if phase is not None:  # every chain starts with a base run
        flags["phase"], flags.labels["phase"] = "base", f"--phase {phase}"
    cfg = load_config(RunConfig, preset, list(overrides), flags)
    explicit = frozenset(explicit_keys(list(overrides), flags))
    launch = processes.plan(cfg.train.device)
    check_used(cfg, explicit, phases)
    base = f"{cfg.id}-base" if cfg.id and len(phases) > 1 else cfg.id
    if len(phases) > 1 and cfg.id and (Path(root) / base).exists():
        check_config(cfg, launch.world)  # the chain continues: its members are checked then
        return TrainPlan(cfg, phases, explicit, launch)
    new = plan_new_run(dataclasses.replace(cfg, id=base), root, launch.world, explicit,
                       memory=not estimate)
    return TrainPlan(cfg, phases, explicit, launch, new)


def _refuse_resume_changes(resume: str, given: dict[str, object]) -> None:
    """--resume continues an experiment as configured: only --max-steps may come with it."""
    if not resume.strip():
        raise UserError("--resume needs an experiment id, tag or path (see `backlm ls`)")
    flag = next((flag for flag, value in given.items() if value is not None), None)
    if flag is not None:
        raise UserError(f"--resume continues an experiment as it was configured; {flag} "
                        "cannot change it (only --max-steps can): drop it, or start a new run "
                        "with --id")
