"""The experiment tree (DESIGN.md §2): the one module that knows an experiment folder's layout.

::

    experiments/<id>/
      config.yaml  metadata.json  parent_link.json  metrics.jsonl  training_summary.json
      tokenizer/  run.lock  {phase}.h5  RESEARCH_REPORT.md  figures/  (.report-*: a report
      being built)
      checkpoints/step_XXXXXX/  checkpoints/best.json  checkpoints/best_5cat.json
      evaluations/<phase>/<order>/<task>.json  evaluations/<phase>/fivecat/step_XXXXXX.json
      evaluations/<phase>/reversal.json  evaluations/<phase>/reversal.png  (the reversal probe)
      notes/notes.txt  notes/issues.txt  notes/generation_samples.jsonl
      hub_upload/<namespace>--<name>/  hub_upload/uploads.json
    experiments/sweeps/<sweep id>/   a sweep's own files (:mod:`backlm.experiment.sweeps`)

Every other module reaches these files through :class:`Experiment`; a test fails if their
names are spelled anywhere else in the package.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backlm import atomic
from backlm.direction import NAME_PATTERN, Direction
from backlm.errors import UserError
from backlm.experiment.lock import RunLock

if TYPE_CHECKING:
    from backlm.config import RunConfig

MAX_ID = 128
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
STEP_RE = re.compile(r"^step_(\d{6,})$")
# best.json: best validation metric (early stopping); best_5cat.json: best 5CAT score.
BEST_FILES = {"val": "best.json", "5cat": "best_5cat.json"}
FIVECAT = "fivecat"  # evaluations/<phase>/fivecat/: 5CAT results, one file per step
REVERSAL = "reversal"  # evaluations/<phase>/reversal.{json,png}: the reversal probe
HUB_DIR = "hub_upload"  # model folders staged for the Hugging Face Hub, and the pushes made


def new_id(phase: str, direction: Direction, depth: int, now: dt.datetime | None = None) -> str:
    """Default experiment id: ``{phase}_{direction}_d{depth}_{YYYYmmdd-HHMMSS}``."""
    now = now or dt.datetime.now()
    return f"{phase}_{direction}_d{depth}_{now:%Y%m%d-%H%M%S}"


def check_id(exp_id: str) -> str:
    """Reject ids that are not safe folder names."""
    if len(exp_id) > MAX_ID:
        raise UserError(f"experiment id is too long ({len(exp_id)} characters, at most "
                        f"{MAX_ID}): choose a shorter --id")
    if not ID_RE.match(exp_id):
        raise UserError(
            f"invalid experiment id {exp_id!r}: start with a letter or digit, then use letters, "
            "digits, '.', '_' and '-' only"
        )
    return exp_id


def check_free_id(root: Path, exp_id: str, fix: str = "choose another --id",
                  resume: bool = True) -> None:
    """Refuse an id whose folder exists: an experiment (``resume``: say how to continue it) or
    a folder backlm did not make, which is never touched (move it away, or ``fix``)."""
    exp = Experiment(Path(root) / exp_id)
    if not exp.path.exists() and not exp.path.is_symlink():
        return
    if exp.metadata_path.is_file():
        also = f" or continue it with `backlm train --resume {exp_id}`" if resume else ""
        raise UserError(f"experiment {exp_id} already exists in {root}: {fix}{also}")
    raise UserError(f"{exp.path} exists and is not a backlm experiment (no "
                    f"{exp.metadata_path.name}): move it away or {fix}")


def utcnow() -> str:
    """Current UTC time, ISO 8601."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_json(path: Path, what: str = "") -> Any:
    """Read a JSON file, turning absence or corruption into a one-line UserError."""
    label = what or str(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{label}: {path} is missing") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{label}: {path} is corrupt ({exc})") from None


def _read_optional(path: Path) -> Any:
    """A JSON file's content, or None when it is absent or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _entry(*parts: str, doc: str) -> property:
    """A read-only path below the experiment folder."""
    return property(lambda self: self.path.joinpath(*parts), doc=doc)


@dataclass(frozen=True)
class Experiment:
    """One experiment folder: every file of DESIGN.md §2 by name."""

    path: Path

    @property
    def id(self) -> str:
        """The experiment id: its folder's name."""
        return self.path.name

    # --- files ---------------------------------------------------------------------------

    config_path = _entry("config.yaml", doc="The resolved configuration (YAML).")
    metadata_path = _entry("metadata.json", doc="Id, phase, direction, status, results ….")
    parent_link_path = _entry("parent_link.json", doc="The parent (null for a base run).")
    metrics_path = _entry("metrics.jsonl", doc="One JSON object per logged step.")
    summary_path = _entry("training_summary.json", doc="Stop reason, best step, cost.")
    tokenizer_dir = _entry("tokenizer", doc="The experiment's own copy of its tokenizer.")
    checkpoints = _entry("checkpoints", doc="``step_XXXXXX/`` folders and best-step records.")
    notes_dir = _entry("notes", doc="Notes, issues and generation samples.")
    samples_path = _entry("notes", "generation_samples.jsonl",
                          doc="Generation samples written during training.")
    report_path = _entry("RESEARCH_REPORT.md", doc="The research report.")
    figures_dir = _entry("figures", doc="The report's figures.")
    hub_dir = _entry(HUB_DIR, doc="Model folders staged for the Hugging Face Hub.")
    hub_uploads_path = _entry(HUB_DIR, "uploads.json",
                              doc="Every push to a hub: repo, endpoint, step, commit, when.")
    evaluations_root = _entry("evaluations", doc="``<phase>/`` folders of eval and 5CAT results.")

    def report_staging(self) -> Path:
        """A new hidden folder inside the experiment where a report is built before it replaces
        RESEARCH_REPORT.md and figures/ (the same file system, so the swap is a rename)."""
        import tempfile

        return Path(tempfile.mkdtemp(prefix=".report-", dir=self.path))

    def notes_path(self, issue: bool = False) -> Path:
        """``notes/notes.txt``, or ``notes/issues.txt`` for issues."""
        return self.notes_dir / ("issues.txt" if issue else "notes.txt")

    def research_log(self, phase: str | None = None) -> Path:
        """The research log ``{phase}.h5`` (default: the experiment's own phase)."""
        return self.path / f"{phase or self.phase}.h5"

    def research_logs(self) -> list[Path]:
        """Every research log in the folder, by name."""
        return sorted(self.path.glob("*.h5"))

    def evaluations_dir(self, phase: str | None = None) -> Path:
        """``evaluations/<phase>/``: everything ``eval`` and ``5cat`` wrote for a phase."""
        return self.evaluations_root / (phase or self.phase)

    def evaluation_path(self, phase: str, order: Direction, task: str) -> Path:
        """``evaluations/<phase>/<order>/<task>.json``: one task read in one order."""
        return self.evaluations_dir(phase) / str(order) / f"{task}.json"

    def fivecat_path(self, phase: str, step: int, declared_as: Direction | None = None
                     ) -> Path:
        """``evaluations/<phase>/fivecat/step_XXXXXX.json`` (``_as-<dir>`` when judged as
        another direction than the checkpoint declares)."""
        suffix = f"_as-{declared_as}" if declared_as else ""
        return self.evaluations_dir(phase) / FIVECAT / f"step_{step:06d}{suffix}.json"

    def reversal_path(self, phase: str | None = None, figure: bool = False) -> Path:
        """``evaluations/<phase>/reversal.json`` (``.png``: its figure): the reversal probe."""
        return self.evaluations_dir(phase) / f"{REVERSAL}.{'png' if figure else 'json'}"

    def reversal_results(self) -> list[Path]:
        """Every phase's ``evaluations/<phase>/reversal.json``, by phase name."""
        return sorted(self.evaluations_root.glob(f"*/{REVERSAL}.json"))

    def evaluation_results(self, phase: str | None = None) -> list[Path]:
        """Every ``evaluations/<phase>/<order>/<task>.json`` of a phase (5CAT's excluded)."""
        return sorted(p for p in self.evaluations_dir(phase).glob("*/*.json")
                      if p.parent.name != FIVECAT)

    def hub_staging_dir(self, repo_id: str) -> Path:
        """``hub_upload/<namespace>--<name>/``: the folder staged for hub repo ``repo_id``
        (hub repo ids never hold ``--``, so two repos never share one)."""
        return self.hub_dir / repo_id.replace("/", "--")

    def hub_uploads(self) -> list[dict[str, Any]]:
        """The pushes recorded in ``hub_upload/uploads.json``, oldest first."""
        data = _read_optional(self.hub_uploads_path)
        return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []

    def record_hub_upload(self, record: dict[str, Any]) -> None:
        """Append one push to ``hub_upload/uploads.json`` atomically."""
        atomic.write_json(self.hub_uploads_path, [*self.hub_uploads(), record])

    def fivecat_results(self, phase: str | None = None) -> list[tuple[int, Path]]:
        """``(step, path)`` of every 5CAT result of a phase judged as the checkpoint's own
        direction, by step."""
        folder = self.evaluations_dir(phase) / FIVECAT
        found = [(STEP_RE.match(p.stem), p) for p in folder.glob("step_*.json")]
        return sorted((int(m.group(1)), p) for m, p in found if m)

    # --- contents --------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """Parsed metadata; a missing or corrupt file is a UserError."""
        meta = read_json(self.metadata_path, what=f"experiment {self.id}")
        if not isinstance(meta, dict):
            raise UserError(f"experiment {self.id}: {self.metadata_path} is corrupt (not an "
                            "object)")
        return meta

    def update_metadata(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the metadata atomically."""
        meta = self.metadata() if self.metadata_path.exists() else {}
        meta.update(fields)
        atomic.write_json(self.metadata_path, meta)
        return meta

    @property
    def phase(self) -> str:
        """The experiment's phase (base, mid, sft, rl) from its metadata."""
        return str(self.metadata().get("phase") or "base")

    def config(self) -> RunConfig:
        """The resolved configuration the experiment was created with."""
        from backlm.config import RunConfig, from_dict, read_yaml

        if not self.config_path.is_file():
            raise UserError(f"experiment {self.id} has no {self.config_path.name}; it cannot "
                            "be trained or evaluated as configured")
        return from_dict(RunConfig, read_yaml(self.config_path))

    def data_dir(self) -> Path:
        """The dataset folder the experiment trained on (held-out text lives there)."""
        folder = self.metadata().get("data_dir")
        if not folder:
            raise UserError(f"experiment {self.id} names no data_dir in "
                            f"{self.metadata_path.name}: its held-out text cannot be found")
        return Path(folder)

    def parent_link(self) -> dict[str, Any] | None:
        """The parent link (None for a base run or a folder without one)."""
        link = _read_optional(self.parent_link_path)
        return link if isinstance(link, dict) else None

    def lineage(self) -> list[Experiment]:
        """The experiment's ancestors that still exist, root first, then itself."""
        chain = [Path(p) for p in (self.parent_link() or {}).get("chain", [])]
        ancestors = [Experiment(p) for p in chain]
        return [e for e in ancestors if e.metadata_path.is_file()] + [self]

    def training_summary(self) -> dict[str, Any] | None:
        """The training summary, or None when absent or unreadable."""
        data = _read_optional(self.summary_path)
        return data if isinstance(data, dict) else None

    def write_training_summary(self, data: dict[str, Any]) -> None:
        atomic.write_json(self.summary_path, data)

    # --- checkpoints -----------------------------------------------------------------------

    def checkpoint_dir(self, step: int) -> Path:
        """Folder of the checkpoint at ``step`` (whether or not it exists)."""
        return self.checkpoints / f"step_{step:06d}"

    def checkpoint_steps(self) -> list[int]:
        """Steps that have a complete checkpoint, ascending."""
        from backlm.experiment.checkpoint import is_complete

        if not self.checkpoints.is_dir():
            return []
        steps = []
        for p in self.checkpoints.iterdir():
            m = STEP_RE.match(p.name)
            if m and is_complete(p):
                steps.append(int(m.group(1)))
        return sorted(steps)

    def latest_checkpoint(self) -> Path | None:
        """Folder of the newest complete checkpoint, or None."""
        steps = self.checkpoint_steps()
        return self.checkpoint_dir(steps[-1]) if steps else None

    def best_path(self, kind: str = "val") -> Path:
        """``checkpoints/best.json`` (kind ``val``) or ``checkpoints/best_5cat.json``."""
        return self.checkpoints / BEST_FILES[kind]

    def best(self, kind: str = "val") -> dict[str, Any] | None:
        """The best-step record of ``kind``, or None when absent or unreadable."""
        data = _read_optional(self.best_path(kind))
        return data if isinstance(data, dict) else None

    def write_best(self, kind: str, record: dict[str, Any]) -> None:
        atomic.write_json(self.best_path(kind), record)

    # --- the run lock ----------------------------------------------------------------------

    def lock(self) -> RunLock:
        """The lock that keeps a second run out of this experiment."""
        return RunLock(self.path / "run.lock")

    def is_running(self) -> bool:
        """Whether a live process holds the run lock."""
        return self.lock().active()


def create(
    root: Path, exp_id: str, *, config_yaml: str, metadata: dict[str, Any],
    parent_link: dict[str, Any] | None, tokenizer_dir: Path | None = None,
) -> Experiment:
    """Create a new experiment folder; an existing id is a UserError (use --resume)."""
    check_id(exp_id)
    exp = Experiment(Path(root) / exp_id)
    check_free_id(root, exp_id)
    try:
        # a fresh name of its own: nothing already in the experiments folder is touched
        tmp = Experiment(atomic.temp_folder(exp.path))
    except OSError as exc:
        raise UserError(f"cannot create experiment {exp_id} in {root}: "
                        f"{exc.strerror or exc}; choose a writable --experiments-dir") from None
    try:
        tmp.checkpoints.mkdir(parents=True)
        tmp.notes_dir.mkdir()
        atomic.write_text(tmp.config_path, config_yaml)
        atomic.write_json(tmp.metadata_path, metadata)
        atomic.write_json(tmp.parent_link_path, parent_link)
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp.tokenizer_dir)
    except OSError as exc:
        shutil.rmtree(tmp.path, ignore_errors=True)
        raise UserError(f"cannot create experiment {exp_id} in {root}: "
                        f"{exc.strerror or exc}; choose a writable --experiments-dir") from None
    except BaseException:
        shutil.rmtree(tmp.path, ignore_errors=True)
        raise
    try:
        os.rename(tmp.path, exp.path)  # atomic: the folder appears complete or not at all
    except OSError:
        shutil.rmtree(tmp.path, ignore_errors=True)
        raise UserError(f"experiment {exp_id} already exists in {root}") from None
    return exp


# --- lookup -----------------------------------------------------------------------------------


def all_experiments(root: Path) -> list[Experiment]:
    """Every experiment folder under ``root`` (those with metadata)."""
    root = Path(root)
    if not root.is_dir():
        blocker = next((p for p in (root, *root.parents) if p.is_file()), None)
        if blocker is not None:
            raise UserError(f"experiments folder {root} cannot exist: {blocker} is a file; "
                            "point --experiments-dir (or BACKLM_EXPERIMENTS) at a folder")
        return []
    # hidden folders are creations in progress (``.<id>.<random>.tmp``), not experiments
    exps = (Experiment(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted((e for e in exps if e.metadata_path.is_file()), key=lambda e: e.id)


TAG_RE = re.compile(rf"^(?:(?P<phase>[a-z]+)_)?d(?P<depth>\d+)_(?P<direction>{NAME_PATTERN})$")


def find(ref: str, root: Path) -> Experiment:
    """Resolve an id, a path, or a tag like ``d20_bidirectional`` / ``sft_d20_backward``.

    A tag picks the newest experiment of that depth and direction (and phase); several
    equally new candidates, or none, are a UserError listing what exists.
    """
    for candidate in (Experiment(Path(ref)), Experiment(Path(root) / ref)):
        if candidate.metadata_path.is_file():
            return candidate
    m = TAG_RE.match(ref)
    exps = all_experiments(root)
    if m:
        hits = []
        for e in exps:
            meta = _read_optional(e.metadata_path) or {}
            if (meta.get("direction") == m["direction"]
                    and str(meta.get("depth")) == m["depth"]
                    and (m["phase"] is None or meta.get("phase") == m["phase"])):
                hits.append((str(meta.get("created", "")), e))
        if hits:
            hits.sort(key=lambda h: h[0])
            newest = [e for c, e in hits if c == hits[-1][0]]
            if len(newest) > 1:
                names = ", ".join(e.id for e in newest)
                raise UserError(f"tag {ref!r} is ambiguous: {names}; name one by id")
            return newest[0]
    known = ", ".join(e.id for e in exps[-8:]) or "none yet"
    raise UserError(f"no experiment {ref!r} in {root} (known: {known}); see `backlm ls`")
