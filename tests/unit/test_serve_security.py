"""The browser server bounded and hardened (issue 22, points 8 and 9): every input bounded before
any work (ids, paths, query strings, bodies, texts and prompts: before the model's lock), the
security headers on every response, the Host header checked on a real socket, and the static
export's policy as a meta tag."""

from __future__ import annotations

import asyncio
import http.client
import re
from urllib.parse import urlsplit

import pytest

from monoscope.serve import FeatureStore, export_site
from monoscope.serve.app import STATIC, create_app
from monoscope.serve.model import ServedModel
from monoscope.serve.steering import SteerEngine
from monoscope.testing import random_feature_store
from monoscope.web.security import CSP, MAX_BODY_BYTES, META_CSP, Guard, HostGuard
from monoscope.web.server import background_server

fastapi_testclient = pytest.importorskip("fastapi.testclient", reason="needs monoscope[serve]")
TestClient = fastapi_testclient.TestClient

SHORT = 300
"""Most characters an error answer may take."""


class SpyFires:
    """A FiresEngine stand-in that records each text it is asked to run."""

    max_tokens = 512

    def __init__(self) -> None:
        self.texts: list[str] = []

    def run(self, text: str) -> dict:
        self.texts.append(text)
        if text == "crash":
            raise RuntimeError("a bug in the engine")
        return {"tokens": [], "features": {}, "n_tokens": 0, "max_tokens": self.max_tokens}


class Tripwire:
    """A lock that fails the request if anything takes it."""

    def __enter__(self):
        raise AssertionError("the model's lock was taken")

    def __exit__(self, *exc) -> None:
        return None


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    return FeatureStore(random_feature_store(tmp_path_factory.mktemp("sec") / "f.db", 16))


@pytest.fixture
def spy() -> SpyFires:
    return SpyFires()


@pytest.fixture
def client(store, spy):
    served = ServedModel(store.meta, store.path)
    served.lock = Tripwire()
    app = create_app(store, fires=spy, steer=SteerEngine(served, store))
    return TestClient(app, raise_server_exceptions=False)


def short_error(response, status: int) -> str:
    assert response.status_code == status, response.text[:500]
    assert len(response.text) < SHORT, response.text[:500]
    return str(response.json()["detail"])


# -- point 8: inputs bounded -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/features/{}", "/api/features/{}/similar"])
def test_an_id_of_thousands_of_digits_is_a_short_404(client, path):
    detail = short_error(client.get(path.format("9" * 5000)), 404)
    assert "no feature" in detail and "5,000 characters" in detail


def test_a_steering_feature_of_thousands_of_digits_is_a_short_404(client):
    response = client.post("/api/steer", json={"feature": "9" * 5000, "prompt": "hi"})
    assert "no feature" in short_error(response, 404)


def test_paths_and_query_strings_over_their_limit_are_414(client):
    assert "path is 9,014 bytes" in short_error(client.get("/api/features/" + "9" * 9000), 414)
    response = client.get("/api/features", params={"query": "x" * 5000})
    assert "query string" in short_error(response, 414)


@pytest.mark.parametrize(
    "method, path, data",
    [
        ("get", "/api/features?offset=" + "9" * 50, None),
        ("get", "/api/features?query=" + "x" * 3000, None),
        ("post", "/api/steer", {"feature": 1, "prompt": "hi", "mode": "m" * 40_000}),
        ("post", "/api/attribute", {"prompt": "hi", "target": "t" * 40_000}),
    ],
)
def test_validation_errors_do_not_echo_the_input(client, method, path, data):
    response = client.request(method, path, json=data)
    detail = short_error(response, 422)
    assert "input" not in response.json()["detail"][0] and "xxxx" not in detail


def test_a_body_over_the_limit_is_413_before_the_route(client, spy):
    text = "a" * (MAX_BODY_BYTES + 1)
    response = client.post("/api/fires", json={"text": text})  # with Content-Length
    assert "over the limit of 65,536 bytes" in short_error(response, 413)

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(100):
            yield b"x" * 1000

    response = client.post("/api/fires", content=chunks())
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "over the limit" in short_error(response, 413)
    assert spy.texts == []


def run_guard(headers: list, chunks: int) -> tuple[list, int, int]:
    """Drive Guard by hand: a POST whose body is `chunks` 1 kB messages (more_body until the
    last). Returns (messages sent, status, messages the body was read in)."""
    reads, sent, calls = 0, [], []

    async def receive():
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": reads < chunks}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        calls.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = {"type": "http", "method": "POST", "path": "/api/fires", "headers": headers}
    asyncio.run(Guard(app, max_body=10_000)(scope, receive, send))
    if calls:
        assert calls[0]["body"] == b"x" * 1000 * chunks and not calls[0]["more_body"]
    return sent, sent[0]["status"], reads


def test_a_streamed_body_is_cut_off_at_the_limit():
    assert run_guard([], 10)[1:] == (200, 10)  # 10,000 bytes: at the limit, passed on whole
    sent, status, reads = run_guard([], 10**6)  # a gigabyte: refused after 11 kB were read
    assert (status, reads) == (413, 11)
    assert dict(sent[0]["headers"])[b"content-security-policy"] == CSP.encode()
    assert run_guard([(b"content-length", b"10**9")], 10)[1:] == (400, 0)
    assert run_guard([(b"content-length", b"20000000")], 10)[1:] == (413, 0)


def test_a_text_too_long_to_run_is_413_before_the_engine(client, spy):
    response = client.post("/api/fires", json={"text": "word " * 2000})
    assert "10,000 characters long; the limit is 8,192" in short_error(response, 413)
    assert spy.texts == []
    assert client.post("/api/fires", json={"text": "word " * 100}).status_code == 200


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/api/steer", {"feature": 1, "prompt": "p" * 5000}, "5,000 characters long"),
        ("/api/steer", {"feature": 1, "prompt": "p", "max_new_tokens": 10**6}, "1..64"),
        ("/api/steer", {"feature": 1, "prompt": "p", "seed": -1}, "seed"),
        ("/api/attribute", {"prompt": "p" * 5000}, "5,000 characters long"),
        ("/api/attribute", {"prompt": "p", "top": 10**6}, "top must be"),
    ],
)
def test_steering_bounds_are_checked_before_the_model_lock(client, path, body, message):
    # The lock is a tripwire: a check made after taking it answers 500.
    assert message in short_error(client.post(path, json=body), 422)


# -- point 9: headers and hosts ----------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("get", "/", None, 200),
        ("get", "/config.js", None, 200),
        ("get", "/assets/js/core.js", None, 200),
        ("get", "/assets/style.css", None, 200),
        ("get", "/api/meta", None, 200),
        ("get", "/api/features/99", None, 404),
        ("get", "/assets/js/nothing.js", None, 404),
        ("get", "/nowhere", None, 404),
        ("get", "/api/features?limit=0", None, 422),
        ("post", "/api/fires", {"text": "x" * 70_000}, 413),
        ("post", "/api/fires", {"text": "crash"}, 500),
    ],
)
def test_every_response_carries_the_security_headers(client, method, path, body, status):
    response = client.request(method, path, json=body)
    assert response.status_code == status
    headers = response.headers
    assert headers["content-security-policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP
    assert "frame-ancestors 'none'" in CSP and headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    if status == 500:
        assert "internal error" in short_error(response, 500)


def test_the_pages_have_no_inline_script_or_markup_from_strings():
    """What the policy forbids, and what would turn text into markup, is not in the front end."""
    page = (STATIC / "index.html").read_text()
    assert all(" src=" in tag for tag in re.findall(r"<script[^>]*>", page))
    assert not re.search(r"\son[a-z]+\s*=", page) and "javascript:" not in page
    for script in (STATIC / "assets" / "js").glob("*.js"):
        code = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in code, f"{script.name} uses {sink}"


def raw_status(url: str, host: str | None) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("GET", "/api/meta", skip_host=True)
        if host is not None:
            conn.putheader("Host", host.format(port=parts.port))
        conn.endheaders()
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_the_host_header_must_name_the_bound_socket(store):
    with background_server(create_app(store)) as url:
        for host in ("127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"):
            assert raw_status(url, host) == 200, host
        for host in ("evil.example:{port}", "127.0.0.1:1", "127.0.0.1", "localhost.evil", None):
            assert raw_status(url, host) == 400, host


def test_host_names_of_other_binds():
    named = HostGuard(None, "box.lan", 8000)
    assert named.allows("BOX.lan:8000") and named.allows("127.0.0.1:8000")
    assert not named.allows("box.lan:8001") and not named.allows("10.0.0.2:8000")
    every = HostGuard(None, "0.0.0.0", 80)
    assert every.allows("10.0.0.2") and every.allows("[fe80::1]:80") and every.allows("localhost")
    assert not every.allows("attacker.example") and not every.allows("10.0.0.2:81")


def test_the_export_carries_the_policy_as_a_meta_tag(store, tmp_path):
    site = export_site(store.path, tmp_path / "site", similar=0)
    page = (site / "index.html").read_text()
    assert f'<meta http-equiv="Content-Security-Policy" content="{META_CSP}">' in page
    # The served policy less frame-ancestors, which browsers ignore in a meta tag.
    assert CSP == META_CSP + "; frame-ancestors 'none'" and "frame-ancestors" not in META_CSP
