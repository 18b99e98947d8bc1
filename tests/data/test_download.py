"""Downloads against a local HTTP server that drops connections, fails and ignores ranges."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backlm.cli import app
from backlm.data.datasets import DATASETS, download_dataset
from backlm.data.download import download_file, part_path
from backlm.data.shards import iter_texts, list_shards, write_shard
from backlm.errors import UserError

FAST = {"backoff": 0.001, "timeout": 5}


class FakeServer:
    """Serves ``files`` by URL path (``/redirect/<path>`` answers 302 to ``/<path>``);
    ``faults[path]`` lists behaviours for the next requests: ``drop`` (full Content-Length,
    half the bytes, then close), ``500``, ``429``, ``404``, ``norange`` (answer 200 with the
    whole file even to a Range request)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def next_fault(self, path: str) -> str | None:
        with self.lock:
            queue = self.faults.get(path) or []
            return queue.pop(0) if queue else None


def _handler(state: FakeServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            with state.lock:
                state.requests.append((self.path, self.headers.get("Range")))
            if self.path.startswith("/redirect/"):  # like huggingface.co -> its CDN
                self.send_response(302)
                self.send_header("Location", self.path[len("/redirect"):])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            fault = state.next_fault(self.path)
            data = state.files.get(self.path)
            if fault in ("404", "429", "500") or data is None:
                code = int(fault) if fault else 404
                body = b"<html>error</html>"
                self.send_response(code)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            start = self._range_start()
            if start is not None and fault != "norange":
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                body = data[start:]
            else:
                self.send_response(200)
                body = data
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault == "drop":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _range_start(self) -> int | None:
            value = self.headers.get("Range")
            if not value or not value.startswith("bytes="):
                return None
            return int(value[len("bytes="):].split("-")[0])

    return Handler


@pytest.fixture
def server():
    state = FakeServer()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def _parquet_bytes(tmp_path: Path, index: int, n: int = 300) -> bytes:
    path = tmp_path / "src" / f"shard_{index:05d}.parquet"
    write_shard(path, [f"shard {index} document {i} " + "word " * (i % 17) for i in range(n)])
    return path.read_bytes()


@pytest.fixture
def payload(tmp_path: Path, server: FakeServer) -> bytes:
    data = _parquet_bytes(tmp_path, 0, n=2000)
    server.files["/shard_00000.parquet"] = data
    return data


def test_resume_after_dropped_connection(tmp_path, server, payload):
    dest = tmp_path / "out" / "f.parquet"
    server.faults["/shard_00000.parquet"] = ["drop"]
    download_file(f"{server.url}/shard_00000.parquet", dest, **FAST)
    assert dest.read_bytes() == payload
    assert not part_path(dest).exists()
    ranges = [r for _, r in server.requests]
    assert ranges == [None, f"bytes={len(payload) // 2}-"]


def test_retries_after_500(tmp_path, server, payload):
    dest = tmp_path / "f.parquet"
    server.faults["/shard_00000.parquet"] = ["500"]
    download_file(f"{server.url}/shard_00000.parquet", dest, **FAST)
    assert dest.read_bytes() == payload
    assert len(server.requests) == 2


def test_429_is_retried(tmp_path, server, payload):
    dest = tmp_path / "f.parquet"
    server.faults["/shard_00000.parquet"] = ["429", "429"]
    download_file(f"{server.url}/shard_00000.parquet", dest, **FAST)
    assert dest.read_bytes() == payload and len(server.requests) == 3


def test_range_survives_a_redirect(tmp_path, server, payload):
    dest = tmp_path / "f.parquet"
    part_path(dest).write_bytes(payload[:500])
    download_file(f"{server.url}/redirect/shard_00000.parquet", dest, **FAST)
    assert dest.read_bytes() == payload
    assert server.requests == [("/redirect/shard_00000.parquet", "bytes=500-"),
                               ("/shard_00000.parquet", "bytes=500-")]


def test_persistent_500_gives_up_and_says_so(tmp_path, server, payload):
    dest = tmp_path / "f.parquet"
    server.faults["/shard_00000.parquet"] = ["500"] * 10
    with pytest.raises(UserError, match="after 3 failed attempts"):
        download_file(f"{server.url}/shard_00000.parquet", dest, retries=2, **FAST)
    assert len(server.requests) == 3
    assert not dest.exists() and not part_path(dest).exists()


def test_404_fails_fast_without_retry(tmp_path, server):
    dest = tmp_path / "f.parquet"
    started = time.monotonic()
    with pytest.raises(UserError, match="HTTP 404"):
        download_file(f"{server.url}/missing.parquet", dest, retries=5, backoff=10)
    assert time.monotonic() - started < 5
    assert len(server.requests) == 1
    assert not dest.exists() and not part_path(dest).exists()


def test_partial_part_is_resumed_with_range(tmp_path, server, payload):
    dest = tmp_path / "f.parquet"
    part_path(dest).write_bytes(payload[:1000])
    download_file(f"{server.url}/shard_00000.parquet", dest, **FAST)
    assert dest.read_bytes() == payload
    assert server.requests == [("/shard_00000.parquet", "bytes=1000-")]


def test_server_ignoring_range_restarts_from_zero(tmp_path, server, payload):
    dest = tmp_path / "f.parquet"
    part_path(dest).write_bytes(b"stale bytes that must not survive")
    server.faults["/shard_00000.parquet"] = ["norange"]
    download_file(f"{server.url}/shard_00000.parquet", dest, **FAST)
    assert dest.read_bytes() == payload


def test_complete_part_answered_416_is_finished(tmp_path, server, payload):
    dest = tmp_path / "f.parquet"
    part_path(dest).write_bytes(payload)
    download_file(f"{server.url}/shard_00000.parquet", dest, **FAST)
    assert dest.read_bytes() == payload
    assert len(server.requests) == 1


def test_existing_dest_is_skipped(tmp_path, server, payload):
    dest = tmp_path / "f.parquet"
    dest.write_bytes(b"already here")
    download_file(f"{server.url}/shard_00000.parquet", dest, **FAST)
    assert dest.read_bytes() == b"already here" and server.requests == []


def test_size_mismatch_detected(tmp_path, server, payload):
    dest = tmp_path / "f.parquet"
    with pytest.raises(UserError, match="expected"):
        download_file(f"{server.url}/shard_00000.parquet", dest,
                      expected_size=len(payload) + 1, **FAST)
    assert not dest.exists() and not part_path(dest).exists()


def test_sha256_checked(tmp_path, server, payload):
    url = f"{server.url}/shard_00000.parquet"
    bad = tmp_path / "bad.parquet"
    with pytest.raises(UserError, match="sha256"):
        download_file(url, bad, sha256="0" * 64, **FAST)
    assert not bad.exists() and not part_path(bad).exists()
    good = tmp_path / "good.parquet"
    download_file(url, good, sha256=hashlib.sha256(payload).hexdigest(), expected_size=len(payload),
                  **FAST)
    assert good.read_bytes() == payload


def test_progress_reports_bytes(tmp_path, server, payload):
    seen = []
    download_file(f"{server.url}/shard_00000.parquet", tmp_path / "f.parquet",
                  progress=lambda done, total: seen.append((done, total)), **FAST)
    assert seen[-1] == (len(payload), len(payload))


def test_non_http_url_rejected(tmp_path):
    with pytest.raises(UserError, match="http"):
        download_file("ftp://example.org/x", tmp_path / "x", **FAST)


def _serve_shards(tmp_path: Path, server: FakeServer, n: int) -> list[bytes]:
    shards = [_parquet_bytes(tmp_path, i) for i in range(n)]
    for i, data in enumerate(shards):
        server.files[f"/shard_{i:05d}.parquet"] = data
    return shards


def test_download_dataset_names_train_and_val(tmp_path, server):
    shards = _serve_shards(tmp_path, server, 4)
    out = tmp_path / "data" / "fw"
    summary = download_dataset("fineweb-edu", out, 3, base_url=server.url, **FAST)
    assert [p.name for p in summary.train] == ["train_00000.parquet", "train_00001.parquet"]
    assert [p.name for p in summary.val] == ["val_00000.parquet"]
    assert (out / "train_00000.parquet").read_bytes() == shards[0]
    assert (out / "train_00001.parquet").read_bytes() == shards[1]
    assert (out / "val_00000.parquet").read_bytes() == shards[2]
    assert len(list_shards(out, "train")) == 2 and len(list_shards(out, "val")) == 1
    assert summary.downloaded == 3 and summary.bytes == sum(map(len, shards[:3]))
    assert sorted(p.name for p in out.iterdir()) == [
        "download.json", "train_00000.parquet", "train_00001.parquet", "val_00000.parquet"]
    assert next(iter_texts(out / "val_00000.parquet")).startswith("shard 2 ")

    server.requests.clear()
    again = download_dataset("fineweb-edu", out, 3, base_url=server.url, **FAST)
    assert again.skipped == 3 and again.downloaded == 0 and server.requests == []


def test_rerun_with_more_shards_keeps_train_and_val_disjoint(tmp_path, server):
    shards = _serve_shards(tmp_path, server, 4)
    out = tmp_path / "fw"
    download_dataset("fineweb-edu", out, 2, base_url=server.url, **FAST)
    assert (out / "val_00000.parquet").read_bytes() == shards[1]
    summary = download_dataset("fineweb-edu", out, 4, base_url=server.url, **FAST)
    assert summary.skipped == 1  # train_00000 stays; shard 1 moves from val to train
    assert (out / "train_00001.parquet").read_bytes() == shards[1]
    assert (out / "val_00000.parquet").read_bytes() == shards[3]
    shrunk = download_dataset("fineweb-edu", out, 2, base_url=server.url, **FAST)
    assert shrunk.removed == 2
    assert sorted(p.name for p in out.glob("*.parquet")) == [
        "train_00000.parquet", "val_00000.parquet"]
    manifest = json.loads((out / "download.json").read_text())
    assert set(manifest["files"]) == {"train_00000.parquet", "val_00000.parquet"}


def test_download_dataset_resumes_after_drop(tmp_path, server):
    shards = _serve_shards(tmp_path, server, 2)
    server.faults["/shard_00001.parquet"] = ["drop"]
    out = tmp_path / "fw"
    download_dataset("fineweb-edu", out, 2, base_url=server.url, workers=2, **FAST)
    assert (out / "val_00000.parquet").read_bytes() == shards[1]
    assert not (out / ".download").exists()


def test_html_payload_is_never_a_shard(tmp_path, server):
    _serve_shards(tmp_path, server, 2)
    server.files["/shard_00000.parquet"] = b"<html><body>Sign in to continue</body></html>"
    out = tmp_path / "fw"
    with pytest.raises(UserError, match="not a parquet shard"):
        download_dataset("fineweb-edu", out, 2, base_url=server.url, workers=1, **FAST)
    assert not (out / "train_00000.parquet").exists()
    assert not list(out.rglob("shard_00000*"))


def test_unknown_dataset_lists_known_ones(tmp_path):
    with pytest.raises(UserError, match="fineweb-edu"):
        download_dataset("nope", tmp_path / "x", 2)


def test_bad_shard_counts(tmp_path):
    with pytest.raises(UserError, match="--shards"):
        download_dataset("fineweb-edu", tmp_path / "x", 1)
    with pytest.raises(UserError, match="--shards"):
        download_dataset("fineweb-edu", tmp_path / "x", 5000)


def test_refuses_folder_with_foreign_shards(tmp_path, server):
    _serve_shards(tmp_path, server, 2)
    out = tmp_path / "mine"
    write_shard(out / "train_00000.parquet", ["my own text"])
    with pytest.raises(UserError, match="not downloaded"):
        download_dataset("fineweb-edu", out, 2, base_url=server.url, **FAST)
    assert next(iter_texts(out / "train_00000.parquet")) == "my own text"
    assert server.requests == []


def test_registry_urls():
    source = DATASETS["fineweb-edu"]
    assert source.url(3).endswith("/resolve/main/shard_00003.parquet")
    assert source.url(3, "http://mirror/x/") == "http://mirror/x/shard_00003.parquet"


def test_cli_download(tmp_path, server, monkeypatch):
    shards = _serve_shards(tmp_path, server, 2)
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(
        app, ["data", "download", "fineweb-edu", "--shards", "2", "--base-url", server.url])
    assert result.exit_code == 0, result.output
    out = tmp_path / "home" / "data" / "fineweb-edu"
    assert (out / "train_00000.parquet").read_bytes() == shards[0]
    assert (out / "val_00000.parquet").read_bytes() == shards[1]


def test_cli_download_404_is_one_line(tmp_path, server, monkeypatch):
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(
        app, ["data", "download", "fineweb-edu", "--shards", "2", "--base-url", server.url])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "HTTP 404" in lines[0]
    assert not list((tmp_path / "home" / "data" / "fineweb-edu").glob("*.parquet"))
