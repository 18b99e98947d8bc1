"""A stand-in for the Hugging Face Hub on 127.0.0.1: exactly the endpoints huggingface_hub
(2.x) calls for ``HfApi.create_repo`` and ``HfApi.upload_folder``, read from its source:

- ``POST /api/repos/create`` (409 when the repo exists; ``exist_ok`` accepts that), and
  ``GET /api/models/<repo>`` (what ``create_repo`` asks after a 401/403);
- ``POST /api/models/<repo>/preupload/<rev>``: each file's upload mode, ``regular`` (content
  base64 in the commit) or ``lfs`` (``lfs=True``: for ``*.safetensors``);
- ``POST /<repo>.git/info/lfs/objects/batch`` and ``PUT /lfs/<oid>``: the git-LFS basic
  transfer (the path without hf_xet; with hf_xet installed the client sends LFS files to a
  Xet storage service instead, which this server does not imitate);
- ``POST /api/validate-yaml``: the card's front matter check (client path without hf_xet);
- ``POST /api/models/<repo>/commit/<rev>``: the NDJSON commit (header, ``file`` with base64
  content, ``lfsFile`` naming an uploaded object).

What arrives is kept per repo (``repos[repo_id]["files"]``: path → bytes). ``fail[kind] =
status`` answers every request of ``kind`` (create, info, preupload, batch, commit) with that
status. A request without ``Authorization: Bearer <token>`` is refused with 401.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(/revision/[^/]+)?$"), "info"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate"),
    ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/[^/]+$"), "preupload"),
    ("POST", re.compile(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$"), "batch"),
    ("PUT", re.compile(r"^/lfs/(?P<oid>[0-9a-f]{64})$"), "lfs"),
    ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/[^/]+$"), "commit"),
]


class FakeHub:
    """The hub's state: repos, uploaded LFS objects, requests seen, faults to answer."""

    def __init__(self, token: str | None, lfs: bool = False) -> None:
        self.token = token
        self.lfs = lfs
        self.url = ""
        self.repos: dict[str, dict[str, Any]] = {}
        self.objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, kind)
        self.headers: list[dict[str, str]] = []  # every request's headers, names lowercased
        self.bodies: list[bytes] = []  # every request's body
        self.validated: list[str] = []
        self.fail: dict[str, int] = {}
        self.lock = threading.Lock()

    def files(self, repo_id: str) -> dict[str, bytes]:
        return self.repos[repo_id]["files"]

    # --- one handler per route: (status, JSON answer) ---------------------------------------

    def create(self, body: dict, _m) -> tuple[int, Any]:
        repo_id = f"{body['organization']}/{body['name']}"
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}
        self.repos[repo_id] = {"private": body.get("visibility") == "private",
                               "type": body.get("type"), "files": {}, "commits": []}
        return 200, {"url": url, "name": repo_id}

    def info(self, _body, m) -> tuple[int, Any]:
        if m["repo"] not in self.repos:
            return 404, {"error": "Repository not found"}
        return 200, {"id": m["repo"], "sha": "0" * 40, "private": False, "siblings": []}

    def validate(self, body: dict, _m) -> tuple[int, Any]:
        self.validated.append(body["content"])
        return 200, {"errors": [], "warnings": []}

    def preupload(self, body: dict, m) -> tuple[int, Any]:
        if m["repo"] not in self.repos:
            return 404, {"error": "Repository not found"}
        return 200, {"files": [
            {"path": f["path"], "shouldIgnore": False,
             "uploadMode": "lfs" if self.lfs and f["path"].endswith(".safetensors")
             else "regular"} for f in body["files"]]}

    def batch(self, body: dict, _m) -> tuple[int, Any]:
        return 200, {"transfer": "basic", "objects": [
            {"oid": o["oid"], "size": o["size"],
             "actions": {"upload": {"href": f"{self.url}/lfs/{o['oid']}"}}}
            for o in body["objects"]]}

    def lfs_put(self, data: bytes, m) -> tuple[int, Any]:
        if hashlib.sha256(data).hexdigest() != m["oid"]:
            return 400, {"error": "sha256 mismatch"}
        self.objects[m["oid"]] = data
        return 200, {}

    def commit(self, data: bytes, m) -> tuple[int, Any]:
        repo = self.repos.get(m["repo"])
        if repo is None:
            return 404, {"error": "Repository not found"}
        lines = [json.loads(x) for x in data.decode().splitlines() if x.strip()]
        assert lines[0]["key"] == "header", lines[0]
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                assert value["encoding"] == "base64"
                repo["files"][value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                repo["files"][value["path"]] = self.objects[value["oid"]]
            else:
                return 400, {"error": f"unexpected operation {line['key']}"}
        oid = hashlib.sha1(data).hexdigest()
        repo["commits"].append({"oid": oid, "summary": lines[0]["value"]["summary"]})
        return 200, {"success": True, "commitOid": oid, "commitUrl": f"{self.url}/"
                     f"{m['repo']}/commit/{oid}", "pullRequestUrl": None}


def _handler(hub: FakeHub):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def _serve(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            route = next(((kind, m) for verb, rx, kind in ROUTES
                          if verb == method and (m := rx.match(path))), None)
            with hub.lock:
                kind, m = route or ("unknown", None)
                hub.requests.append((method, path, kind))
                hub.headers.append({k.lower(): v for k, v in self.headers.items()})
                hub.bodies.append(data)
                status, answer = self._answer(kind, m, data)
            body = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _answer(self, kind: str, m, data: bytes) -> tuple[int, Any]:
            if m is None:
                return 404, {"error": f"no route {self.command} {self.path}"}
            if kind in hub.fail:
                return hub.fail[kind], {"error": f"refused by the test ({kind})"}
            if kind == "lfs":  # a presigned storage URL: no hub token
                return hub.lfs_put(data, m)
            if hub.token is not None and \
                    self.headers.get("Authorization") != f"Bearer {hub.token}":
                return 401, {"error": "Invalid credentials in Authorization header"}
            if kind == "commit":
                return hub.commit(data, m)
            return getattr(hub, kind)(json.loads(data or b"{}"), m)

    return Handler


@contextlib.contextmanager
def running_hub(token: str | None, lfs: bool = False) -> Iterator[FakeHub]:
    """A :class:`FakeHub` served on 127.0.0.1 (a free port) while the block runs."""
    hub = FakeHub(token, lfs=lfs)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield hub
    finally:
        httpd.shutdown()
        httpd.server_close()
