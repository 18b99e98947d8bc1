"""The Hugging Face Hub client boundary: create a model repo and push a folder to it with
huggingface_hub, every failure turned into one line that never holds the token."""

from __future__ import annotations

from pathlib import Path

from backlm.errors import UserError


def push_folder(folder: Path, repo_id: str, *, endpoint: str, token: str, private: bool,
                message: str) -> tuple[str, str | None]:
    """Create ``repo_id`` (kept if it exists) on the hub at ``endpoint`` and upload
    ``folder`` to it; the repo's URL and the commit id. Any failure is one UserError."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # the command shows its own progress
    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                 commit_message=message)
    except Exception as exc:  # the hub client's errors: HTTP, network, malformed answers
        raise UserError(hub_error(exc, endpoint, repo_id, token)) from None
    return str(url), getattr(info, "oid", None)


def hub_error(exc: BaseException, endpoint: str, repo_id: str, token: str | None) -> str:
    """One line for a failed push: what the hub said and what to do (never the token)."""
    from huggingface_hub.utils import HfHubHTTPError  # also there before huggingface_hub.errors

    where = f"the hub at {endpoint}"
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, HfHubHTTPError):
        cause = cause.__cause__ or cause.__context__
    status = getattr(getattr(cause, "response", None), "status_code", None)
    if status == 401:
        line = (f"{where} refused the token (401 Unauthorized): set HF_TOKEN or --token to a "
                f"valid write token from {endpoint}/settings/tokens")
    elif status == 403:
        line = (f"{where} does not let this token write to {repo_id} (403 Forbidden): use a "
                f"write token of {repo_id.split('/')[0]}, or another --repo namespace")
    elif status == 404:
        line = (f"{where} has no repository {repo_id} and did not create it (404 Not Found): "
                "check the namespace in --repo and what the token may do")
    elif status is not None:
        line = (f"{where} answered {status} while pushing {repo_id} ({_first_line(cause)}): "
                "try again later")
    else:
        line = (f"could not push {repo_id} to {where} ({type(exc).__name__}: "
                f"{_first_line(exc)}): check the network connection and --endpoint")
    return line.replace(token, "***") if token else line


def _first_line(exc: BaseException | None) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."
