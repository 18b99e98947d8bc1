"""``backlm upload``: check an upload completely, stage the checkpoint as a hub model folder
(:mod:`backlm.hub.staging`) and push it (:mod:`backlm.hub.client`).

The folder is the experiment's ``hub_upload/<namespace>--<name>/``. It is built under a
temporary name; a push goes from there, and only a successful one renames it into place and
records the push in ``hub_upload/uploads.json`` — a refused push leaves the experiment as it
was. A dry run stages, renames and stops: it never builds a hub client. The token comes from
``--token`` or HF_TOKEN and goes to the hub client only: never printed, logged or written.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backlm import atomic
from backlm.errors import UserError
from backlm.experiment import checkpoint as ckpt
from backlm.experiment.folder import Experiment, find, utcnow
from backlm.hub.staging import FolderSpec, Staged, is_old_folder, write_folder

DEFAULT_ENDPOINT = "https://huggingface.co"
# Hub rules (huggingface_hub.utils.validate_repo_id): letters, digits, '_', '-', '.'; each part
# starts and ends with a letter, digit or '_'; no '--' or '..'; a name of at most 96 characters.
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
REPO_RE = re.compile(rf"^({_PART})/({_PART})$")
LICENSE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
STAGING = "the hub staging folder"  # what made it, in its marker and in messages


@dataclass
class UploadRequest:
    """What ``backlm upload`` was asked (``token`` None: read HF_TOKEN)."""

    experiment: str
    repo_id: str
    root: Path
    step: str | None = None
    private: bool = False
    dry_run: bool = False
    token: str | None = field(default=None, repr=False)
    endpoint: str | None = None
    license: str = "mit"


@dataclass
class UploadPlan:
    """A checked upload: what it stages, where, and where it goes."""

    spec: FolderSpec
    staging: Path  # the staged folder's final place
    private: bool
    dry_run: bool
    token: str | None = field(default=None, repr=False)


@dataclass
class UploadResult:
    """A staged (and, unless a dry run, pushed) folder."""

    plan: UploadPlan
    staged: Staged
    url: str | None = None
    commit: str | None = None

    @property
    def folder(self) -> Path:
        return self.plan.staging


# on_event(event, result): "staged" once the folder is written, "pushing" before the push
# (events, not a count: nothing here knows how far a push has got).
OnEvent = Callable[[str, UploadResult], None]


def check_repo_id(repo_id: str) -> str:
    """A hub model id ``namespace/name``, or a UserError saying what is wrong with it."""
    text = (repo_id or "").strip()
    if "/" not in text:
        raise UserError(f"--repo {repo_id!r} has no namespace: give it as namespace/name "
                        "(your user or organisation, a slash, the model's name)")
    m = REPO_RE.match(text)
    if not m or "--" in text or ".." in text or text.endswith(".git") or len(m[2]) > 96:
        raise UserError(f"--repo {repo_id!r} is not a hub model id: use namespace/name with "
                        "letters, digits, '_', '-' and '.', each part starting and ending with "
                        "a letter or digit, no '--' or '..', a name of at most 96 characters")
    return text


def check_endpoint(endpoint: str | None) -> str:
    """The hub URL: ``endpoint``, else HF_ENDPOINT, else huggingface.co."""
    url = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise UserError(f"hub endpoint {url!r} is not an http(s) URL: give --endpoint like "
                        f"{DEFAULT_ENDPOINT} (or unset HF_ENDPOINT)")
    return url


def resolve_token(token: str | None) -> str | None:
    """``--token``, else HF_TOKEN; None when neither holds one."""
    chosen = token if token is not None else os.environ.get("HF_TOKEN")
    return (chosen or "").strip() or None


def choose_step(exp: Experiment, step: str | None) -> tuple[Path, int]:
    """The checkpoint to upload: ``best`` (the default when recorded, else the latest),
    ``best_5cat``, ``latest`` or a step number."""
    from backlm.experiment.loading import pick_checkpoint

    return pick_checkpoint(exp, step, "upload", ("best", "best_5cat", "latest"))


def check_checkpoint(exp: Experiment, step: str | None, verb: str
                     ) -> tuple[Path, int, dict, object]:
    """The checkpoint to stage (``best`` by default, ``best_5cat``, ``latest`` or a number),
    checked whole: its folder, step, meta and the experiment's tokenizer, which must be the
    one it was trained with. ``verb`` says what it is for in messages."""
    from backlm.experiment import compat
    from backlm.experiment.loading import pick_checkpoint

    exp.metadata()  # a corrupt metadata.json is refused here, not halfway through staging
    folder, step_n = pick_checkpoint(exp, step, verb, ("best", "best_5cat", "latest"))
    meta = ckpt.validate_meta(ckpt.read_meta(folder), folder, resume=False)
    weights = folder / ckpt.MODEL_FILE
    if not weights.is_file():
        raise UserError(f"checkpoint {folder} is incomplete: {ckpt.MODEL_FILE} is missing")
    if meta.get("model_sha256") not in (None, ckpt.sha256_file(weights)):
        raise UserError(f"checkpoint {folder} is corrupt: {ckpt.MODEL_FILE} checksum mismatch; "
                        f"{verb} another --step")
    tokenizer = compat.check_tokenizer(exp.tokenizer_dir, ckpt.model_config(meta).vocab_size,
                                       meta, folder)
    return folder, step_n, meta, tokenizer


def plan_upload(req: UploadRequest) -> UploadPlan:
    """Check everything an upload needs, in the order a user would fix it; writes nothing and
    contacts nothing."""
    from backlm.paths import check_writable

    repo_id = check_repo_id(req.repo_id)
    license_ = (req.license or "").strip().lower()
    if not LICENSE_RE.match(license_):
        raise UserError(f"--license {req.license!r} is not a license id: use one the hub knows, "
                        "such as mit, apache-2.0, cc-by-4.0 or other")
    endpoint = check_endpoint(req.endpoint)
    token = resolve_token(req.token)
    if token is None and not req.dry_run:
        raise UserError("no hub token: set HF_TOKEN (or pass --token) to a write token from "
                        f"{endpoint}/settings/tokens, or only stage with --dry-run")
    exp = find(req.experiment, req.root)
    folder, step, meta, tokenizer = check_checkpoint(exp, req.step, "upload")
    weights = folder / ckpt.MODEL_FILE
    staging = exp.hub_staging_dir(repo_id)
    atomic.check_replaceable(staging, STAGING, is_old_folder)
    check_writable(staging.parent, "the staging folder", "make the experiment folder writable")
    needed = int(weights.stat().st_size * 1.05) + (4 << 20)
    free = shutil.disk_usage(exp.path).free
    if free < needed:
        raise UserError(f"not enough disk space to stage {exp.id}: it needs about "
                        f"{needed / 1e6:,.0f} MB in {exp.path}, {free / 1e6:,.0f} MB are free")
    spec = FolderSpec(exp, repo_id, folder, step, meta, tokenizer, license_, endpoint)
    return UploadPlan(spec, staging, req.private, req.dry_run, token)


def upload(req: UploadRequest, on_event: OnEvent | None = None) -> UploadResult:
    """Check, stage and (unless a dry run) push. The staged folder replaces an earlier one
    only once the push succeeded (or for a dry run); a push is then recorded."""
    from backlm.hub.client import push_folder

    plan = plan_upload(req)
    spec = plan.spec
    had_hub_dir = plan.staging.parent.exists()
    # a fresh name of its own: nothing already beside the staging folder is touched
    tmp = atomic.temp_folder(plan.staging)
    try:
        try:
            result = UploadResult(plan, write_folder(spec, tmp))
        except OSError as exc:  # name the user's staging folder, not the temporary one
            raise UserError(f"cannot stage {spec.exp.id} in {plan.staging}: "
                            f"{exc.strerror or exc}; free some space in {spec.exp.path}") from None
        if on_event is not None:
            on_event("staged", result)
        if not plan.dry_run:
            if on_event is not None:
                on_event("pushing", result)
            message = f"backlm upload: {spec.exp.id} step {spec.step} ({spec.direction})"
            assert plan.token is not None  # plan_upload refuses a push without one
            result.url, result.commit = push_folder(
                tmp, spec.repo_id, endpoint=spec.endpoint, token=plan.token,
                private=plan.private, message=message)
        atomic.replace_owned(tmp, plan.staging, STAGING, is_old_folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not had_hub_dir:
            with contextlib.suppress(OSError):
                plan.staging.parent.rmdir()
        raise
    if not plan.dry_run:
        spec.exp.record_hub_upload({
            "repo_id": spec.repo_id, "endpoint": spec.endpoint, "url": result.url,
            "commit": result.commit, "step": spec.step, "phase": spec.phase,
            "direction": spec.direction, "private": plan.private, "pushed": utcnow(),
            "weights_sha256": ckpt.sha256_file(plan.staging / ckpt.MODEL_FILE)})
    return result
