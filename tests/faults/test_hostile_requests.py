"""Hostile but fair requests to a real `monoscope serve` process over loopback (issue 22): each
is answered with a short error, quickly, with the security headers, and the server goes on
serving; nothing reaches its log as a traceback."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from monoscope.testing import random_feature_store

pytestmark = pytest.mark.faults

BIG_BODY = 19_500_000  # the 19.5 MB POST


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, int, subprocess.Popen]]:
    db = random_feature_store(tmp_path_factory.mktemp("hostile") / "f.db", n_features=32)
    proc = subprocess.Popen(
        [sys.executable, "-m", "monoscope", "serve", str(db), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # "browsing N features of DB at URL", once bound
    assert " at http://" in line, line + proc.stderr.read()
    url = urlsplit(line.split(" at ")[-1].strip())
    yield url.hostname, url.port, proc
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err


def request(server, method: str, path: str, body: bytes | None = None, headers=None):
    host, port, _ = server
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def assert_short_error(status: int, headers: dict, body: bytes, expected: int) -> None:
    assert status == expected, body[:300]
    assert len(body) < 2000 and b"Traceback" not in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"


def test_a_5000_digit_id_is_a_404(server):
    assert_short_error(*request(server, "GET", "/api/features/" + "9" * 5000), 404)


def test_a_huge_query_string_is_refused(server):
    assert_short_error(*request(server, "GET", "/api/features?query=" + "a" * 20_000), 414)


def test_sql_and_markup_in_a_search_are_only_text(server):
    for query in ("' OR 1=1 --", '"; DROP TABLE features; --', "<script>alert(1)</script>"):
        status, _, body = request(server, "GET", "/api/features?query=" + query.replace(" ", "+"))
        assert status == 200 and "items" in json.loads(body)


def test_a_19mb_body_is_refused_before_it_is_read(server):
    start = time.perf_counter()
    status, headers, body = request(
        server, "POST", "/api/fires", b"x" * BIG_BODY, {"Content-Type": "application/json"}
    )
    assert_short_error(status, headers, body, 413)
    assert time.perf_counter() - start < 10  # sending the body itself takes most of it


def test_a_chunked_body_over_the_limit_is_cut_off(server):
    def chunks() -> Iterator[bytes]:
        for _ in range(300):  # 19.2 MB in all, if it were read to the end
            yield b"x" * 64_000

    try:
        status, headers, body = request(
            server,
            "POST",
            "/api/fires",
            chunks(),
            {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        )
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server answered 413 and closed without reading on, while we still sent
    else:
        assert_short_error(status, headers, body, 413)
    assert request(server, "GET", "/api/meta")[0] == 200


def test_another_host_name_is_refused(server):
    status, headers, body = request(server, "GET", "/api/meta", headers={"Host": "evil.example"})
    assert status == 400 and b"not a name of this server" in body
    assert headers["x-frame-options"] == "DENY"


def test_traversal_is_not_found(server):
    for path in ("/../../etc/passwd", "/assets/..%2f..%2fapp.py", "/%2e%2e/%2e%2e/etc/passwd"):
        status, _, body = request(server, "GET", path)
        assert status in (404, 400) and b"root:" not in body


def test_the_server_still_answers_and_a_second_one_on_its_port_is_one_line(server):
    status, _, body = request(server, "GET", "/api/meta")
    assert status == 200 and json.loads(body)["n_features"] == 32
    _, port, proc = server
    assert proc.poll() is None
    second = subprocess.run(
        [sys.executable, "-m", "monoscope", "serve", "x.db", "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
