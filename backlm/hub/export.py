"""``backlm export EXP --format hf OUT``: one checkpoint as a Hugging Face model folder on
disk, the same folder ``backlm upload`` stages (:mod:`backlm.hub.staging`), for no hub.

Everything is checked before anything is written: the experiment and checkpoint, the format,
and ``OUT``, which must not exist. The folder is built under a temporary name beside ``OUT``
and renamed into place whole, so an export that fails leaves nothing.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from backlm.errors import UserError
from backlm.experiment.folder import find
from backlm.hub.staging import FolderSpec, Staged, write_folder

FORMATS = ("hf",)


@dataclass
class ExportRequest:
    """What ``backlm export`` was asked."""

    experiment: str
    out: Path
    root: Path
    format: str = "hf"
    step: str | None = None
    license: str = "mit"


@dataclass
class ExportResult:
    """A written folder."""

    folder: Path
    spec: FolderSpec
    staged: Staged


def plan_export(req: ExportRequest) -> tuple[FolderSpec, Path]:
    """Check an export completely; writes nothing. The folder spec and ``OUT``, absolute."""
    from backlm.hub.upload import check_checkpoint
    from backlm.paths import check_writable

    fmt = (req.format or "").strip().lower()
    if fmt not in FORMATS:
        raise UserError(f"--format {req.format!r} is not an export format: use "
                        f"{', '.join(FORMATS)} (a transformers model folder)")
    out = Path(req.out).expanduser().absolute()
    if out.exists() or out.is_symlink():
        raise UserError(f"{out} already exists: export into a new folder (move it away, or "
                        "give another path); an export never replaces a folder")
    exp = find(req.experiment, req.root)
    folder, step, meta, tokenizer = check_checkpoint(exp, req.step, "export")
    check_writable(out.parent, "the export folder's parent", "export elsewhere")
    spec = FolderSpec(exp, None, folder, step, meta, tokenizer, req.license or "mit",
                      "https://huggingface.co", location=out)
    return spec, out


def export(req: ExportRequest) -> ExportResult:
    """Check, then write the model folder at ``req.out`` whole (or nothing)."""
    from backlm import atomic

    spec, out = plan_export(req)
    tmp = atomic.temp_folder(out)  # a fresh name: nothing beside OUT is touched
    try:
        staged = write_folder(spec, tmp)
        atomic.mark_owned(tmp, "backlm export")
        os.rename(tmp, out)  # OUT was checked absent; a folder made since is not replaced
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write the export folder {out}: {exc.strerror or exc}; free "
                        "some space or export elsewhere") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, spec, staged)
