"""Single-file downloads against a local HTTP server that drops connections, fails and
ignores ranges."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from backlm.data.download import download_file, part_path
from backlm.errors import UserError
from tests.helpers import DOWNLOAD_FAST as FAST
from tests.helpers import FakeServer
from tests.helpers import parquet_bytes as _parquet_bytes


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
