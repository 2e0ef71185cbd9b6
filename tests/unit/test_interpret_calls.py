"""The call layer: the cache, replay, the budget, retries, rate limits, run_jobs, and a kill -9
mid-run, with fake backends that count what they are sent."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from monoscope.interpret.backends.base import (
    BackendError,
    Capabilities,
    ChatRequest,
    ChatResponse,
    RetryableError,
)
from monoscope.interpret.cache import CallCache, call_key
from monoscope.interpret.calls import (
    BudgetExhausted,
    CallLimits,
    LLMClient,
    RateLimiter,
    ReplayMiss,
    RetriesExhausted,
    run_jobs,
)
from monoscope.interpret.pricing import Price, PriceError, PriceTable


class CountingBackend:
    """Answers with the reversed last message; every prompt character is a token. `faults`
    are raised, one per call, before answers start."""

    name, capabilities = "fake", Capabilities()

    def __init__(self, model: str = "paid", faults=(), delay: float = 0.0, clock=None):
        self.model, self.faults, self.delay, self.clock = model, list(faults), delay, clock
        self.sent: list[ChatRequest] = []
        self.times: list[float] = []
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(text)

    def chat(self, request: ChatRequest, timeout: float) -> ChatResponse:
        with self._lock:
            self.sent.append(request)
            if self.clock is not None:
                self.times.append(self.clock())
            fault = self.faults.pop(0) if self.faults else None
        if fault is not None:
            raise fault
        time.sleep(self.delay)
        prompt = sum(len(c) for _, c in request.messages)
        text = request.messages[-1][1][::-1]
        return ChatResponse(text, prompt, min(len(text), request.max_tokens), None, "stop")


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def ask(i: int, max_tokens: int = 10) -> ChatRequest:
    return ChatRequest(messages=(("user", f"question {i:03d}"),), max_tokens=max_tokens)


# 1000 USD per million tokens: a call of 12 prompt + 4 overhead + 10 max tokens costs <= 2.6 c.
PRICES = PriceTable({"paid": Price(1000.0, 1000.0)})


@pytest.fixture
def cache(tmp_path):
    return CallCache(tmp_path / "calls.sqlite")


def test_second_call_is_answered_by_the_cache(cache):
    backend = CountingBackend()
    client = LLMClient(backend, cache, prices=PRICES)
    first, again = client.call(ask(1)), client.call(ask(1))
    assert len(backend.sent) == 1 and not first.cached and again.cached
    assert again.response == first.response and again.key == first.key
    assert first.cost_usd == pytest.approx((12 + 10) * 1e-3) and again.cost_usd == 0.0
    assert (client.stats.n_sent, client.stats.n_cached) == (1, 1)
    # A fresh client on the same file pays nothing either.
    other = LLMClient(CountingBackend(), CallCache(cache.path), prices=PRICES)
    assert other.call(ask(1)).cached and other.stats.n_sent == 0


def test_the_key_is_the_content_of_the_call():
    base = call_key("openai", "m", ask(1))
    assert base == call_key("openai", "m", ask(1))
    changed = [
        call_key("anthropic", "m", ask(1)),
        call_key("openai", "m2", ask(1)),
        call_key("openai", "m", ask(2)),
        call_key("openai", "m", ChatRequest(ask(1).messages, max_tokens=10, seed=1)),
        call_key("openai", "m", ChatRequest(ask(1).messages, max_tokens=10, temperature=0.5)),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_replay_only_answers_from_the_cache_alone(cache):
    LLMClient(CountingBackend(), cache).call(ask(1))
    backend = CountingBackend()
    replay = LLMClient(backend, cache, replay_only=True)
    assert replay.call(ask(1)).cached
    with pytest.raises(ReplayMiss, match="replay-only"):
        replay.call(ask(2))
    assert backend.sent == []


def test_budget_stops_at_the_budget(cache):
    backend = CountingBackend()
    # Worst case per call: (12 + 4 + 10) tokens * 1e-3 $ = 0.026 $; actual 0.022 $.
    client = LLMClient(backend, cache, prices=PRICES, budget_usd=0.1)
    sent = 0
    with pytest.raises(BudgetExhausted, match=r"budget \$0.1000 reached"):
        for i in range(10):
            client.call(ask(i))
            sent += 1
    # 4 calls spend 0.088; a fifth might cost up to 0.026 more and is refused.
    assert sent == len(backend.sent) == 4
    assert client.stats.spent_usd == pytest.approx(0.088) and client.stats.reserved_usd == 0
    assert client.call(ask(0)).cached  # what is cached stays free past the budget


def test_budget_needs_a_price(cache):
    with pytest.raises(PriceError, match="--prices"):
        LLMClient(CountingBackend(model="mystery"), cache, budget_usd=1.0)
    client = LLMClient(CountingBackend(model="mystery"), cache)  # no budget: fine
    assert client.estimate(ask(1))[2] is None
    assert client.call(ask(1)).cost_usd == 0.0


def test_estimate_counts_tokens_and_knows_what_is_cached(cache):
    client = LLMClient(CountingBackend(), cache, prices=PRICES)
    assert client.estimate(ask(1)) == (16, 10, pytest.approx(0.026), False)
    client.call(ask(1))
    assert client.estimate(ask(1)) == (16, 10, 0.0, True)


def test_429_is_retried_after_the_servers_hint(cache):
    clock = FakeClock()
    faults = [RetryableError("rate limited", 429, retry_after=7.5)] * 2
    backend = CountingBackend(faults=faults)
    client = LLMClient(backend, cache, clock=clock, sleep=clock.sleep)
    assert client.call(ask(1)).response.text == "100 noitseuq"
    assert clock.sleeps == [7.5, 7.5] and len(backend.sent) == 3
    assert client.stats.n_retries == 2 and client.stats.n_sent == 1


def test_backoff_is_full_jitter_and_gives_up(cache):
    clock = FakeClock()
    backend = CountingBackend(faults=[RetryableError("500", 500)] * 10)
    limits = CallLimits(max_retries=4, backoff_base_s=1.0, backoff_max_s=3.0)
    client = LLMClient(backend, cache, limits, clock=clock, sleep=clock.sleep)
    with pytest.raises(RetriesExhausted, match="gave up after 5 attempts"):
        client.call(ask(1))
    assert len(backend.sent) == 5 and len(clock.sleeps) == 4
    for attempt, slept in enumerate(clock.sleeps):
        assert 0 <= slept <= min(3.0, 2**attempt)
    assert len(cache) == 0


def test_a_backend_error_is_not_retried(cache):
    backend = CountingBackend(faults=[BackendError("401: check the key")])
    with pytest.raises(BackendError, match="401"):
        LLMClient(backend, cache).call(ask(1))
    assert len(backend.sent) == 1


def test_rate_limiter_spaces_requests():
    clock = FakeClock()
    bucket = RateLimiter(per_minute=2, clock=clock, sleep=clock.sleep)
    assert [bucket.acquire() for _ in range(5)] == [0, 0, 30, 30, 30]
    big = RateLimiter(per_minute=60, clock=clock, sleep=clock.sleep)
    assert big.acquire(1000) == 0 and big.acquire(30) == 30  # bigger than the bucket: all of it


def test_client_honours_request_and_token_rates(cache):
    clock = FakeClock()
    backend = CountingBackend(clock=clock)
    client = LLMClient(
        backend, cache, CallLimits(requests_per_minute=2), clock=clock, sleep=clock.sleep
    )
    for i in range(4):
        client.call(ask(i))
    assert backend.times == [0, 0, 30, 60]
    clock2 = FakeClock()
    backend2 = CountingBackend(clock=clock2)
    limits = CallLimits(tokens_per_minute=52)  # two calls of 16 + 10 tokens a minute
    client2 = LLMClient(
        backend2,
        CallCache(cache.path.with_name("b.sqlite")),
        limits,
        clock=clock2,
        sleep=clock2.sleep,
    )
    for i in range(4):
        client2.call(ask(i))
    assert backend2.times == [0, 0, 30, 60]


def test_concurrent_calls_are_counted_exactly(cache):
    backend = CountingBackend(delay=0.002)
    client = LLMClient(backend, cache, CallLimits(max_concurrency=8), prices=PRICES)
    threads = [threading.Thread(target=lambda k=k: client.call(ask(k % 20))) for k in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = client.stats
    assert stats.n_sent + stats.n_cached == 40 and stats.n_sent == len(backend.sent) >= 20
    assert len(cache) == 20 and stats.reserved_usd == pytest.approx(0, abs=1e-12)
    assert stats.spent_usd == pytest.approx(stats.n_sent * 0.022)


def test_run_jobs_stops_on_the_budget_and_keeps_what_is_done(cache):
    client = LLMClient(CountingBackend(), cache, prices=PRICES, budget_usd=0.1)
    seen = []

    def on_done(item, result):
        seen.append((item, result.response.text, threading.current_thread().name))

    summary = run_jobs(
        range(10),
        lambda i: client.call(ask(i)),
        max_concurrency=1,
        on_done=on_done,
        client=client,
        progress=False,
    )
    assert summary.stopped_by_budget and "budget" in summary.stop_reason
    assert summary.done == [0, 1, 2, 3] and summary.not_done == [4, 5, 6, 7, 8, 9]
    assert [s[0] for s in seen] == summary.done
    assert {s[2] for s in seen} == {threading.current_thread().name}
    assert len(cache) == 4


def test_run_jobs_records_per_item_failures_and_stops_on_backend_errors(cache):
    def fn(i):
        if i == 2:
            raise ValueError("no examples")
        return i

    summary = run_jobs(range(5), fn, max_concurrency=2, on_done=lambda i, r: None, progress=False)
    assert summary.done == [0, 1, 3, 4] or sorted(summary.done) == [0, 1, 3, 4]
    assert summary.failed == [(2, "ValueError: no examples")] and not summary.stop_reason
    backend = CountingBackend(faults=[BackendError("HTTP 401: check OPENAI_API_KEY")] * 50)
    client = LLMClient(backend, cache)
    summary = run_jobs(
        range(20),
        lambda i: client.call(ask(i)),
        max_concurrency=1,
        on_done=lambda i, r: None,
        progress=False,
    )
    assert "401" in summary.stop_reason and len(summary.failed) == 1 and len(backend.sent) == 1
    assert len(summary.not_done) == 19


def test_run_jobs_on_ctrl_c_keeps_finished_calls(cache):
    backend = CountingBackend(delay=0.05)
    client = LLMClient(backend, cache, CallLimits(max_concurrency=3))
    done = []

    def on_done(item, result):
        done.append(item)
        if len(done) == 3:
            raise KeyboardInterrupt  # Ctrl-C arrives in the main thread

    with pytest.raises(KeyboardInterrupt):
        run_jobs(
            range(30),
            lambda i: client.call(ask(i)),
            max_concurrency=3,
            on_done=on_done,
            client=client,
            progress=False,
        )
    sent = len(backend.sent)
    assert 3 <= sent <= 3 + 3 and len(cache) == sent  # in-flight calls finished and cached
    rerun = CountingBackend()
    again = LLMClient(rerun, cache)
    run_jobs(
        range(30),
        lambda i: again.call(ask(i)),
        max_concurrency=3,
        on_done=lambda i, r: None,
        progress=False,
    )
    assert len(rerun.sent) == 30 - sent and again.stats.n_cached == sent


CHILD = textwrap.dedent(
    """
    import sys, time
    from monoscope.interpret.backends.base import Capabilities, ChatRequest, ChatResponse
    from monoscope.interpret.cache import CallCache
    from monoscope.interpret.calls import LLMClient

    class Slow:
        name, model, capabilities = "fake", "paid", Capabilities()
        def count_tokens(self, text):
            return len(text)
        def chat(self, request, timeout):
            with open(sys.argv[2], "a") as log:
                log.write("sent\\n")
            time.sleep(0.05)
            return ChatResponse("ok", 5, 1)

    client = LLMClient(Slow(), CallCache(sys.argv[1]))
    for i in range(200):
        client.call(ChatRequest(messages=(("user", f"q{i}"),)))
    """
)


def test_kill_9_mid_run_then_a_rerun_pays_only_for_the_rest(tmp_path):
    path, log = tmp_path / "calls.sqlite", tmp_path / "sent.log"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(path), str(log)])
    try:
        deadline = time.monotonic() + 60
        while not (path.exists() and _rows(path) >= 5):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.02)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    kept = _rows(path)
    paid_before = log.read_text().count("sent")
    assert 5 <= kept <= paid_before <= kept + 1  # at most the call in flight is lost
    backend = CountingBackend()
    client = LLMClient(backend, CallCache(path))
    requests = [ChatRequest(messages=(("user", f"q{i}"),)) for i in range(40)]
    for request in requests:
        client.call(request)
    assert client.stats.n_cached == kept and len(backend.sent) == 40 - kept


def _rows(path) -> int:
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        except sqlite3.OperationalError:  # the child has not made the table yet
            return 0


def test_price_table(tmp_path):
    table = PriceTable()
    assert table.price("openai", "gpt-4o-mini-2024-07-18") == Price(0.15, 0.60)
    assert table.price("anthropic", "claude-haiku-4-5-20251001") == Price(1.0, 5.0)
    assert table.price("local", "anything") == Price(0.0, 0.0)
    assert table.price("openai", "my-vllm-model") is None
    assert Price(0.15, 0.60).cost(1_000_000, 500_000) == pytest.approx(0.45)
    path = tmp_path / "prices.json"
    path.write_text(
        '{"my-vllm-model": {"input": 0, "output": 0}, "gpt-4o": {"input": 1, "output": 2}}'
    )
    table = PriceTable.load(path)
    assert table.require("openai", "my-vllm-model") == Price(0.0, 0.0)
    assert table.price("openai", "gpt-4o") == Price(1.0, 2.0)
    path.write_text('{"m": {"input": 1}}')
    with pytest.raises(PriceError, match="--prices"):
        PriceTable.load(path)
