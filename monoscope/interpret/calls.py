"""Every LLM call of the interpret stage goes through `LLMClient.call`: the cache first (free),
then a budget reservation, the rate limits, one or more attempts with backoff, and the answer
stored before it is returned. `run_jobs` runs a function over many items on a thread pool, with
the progress bar, and stops cleanly on the budget or Ctrl-C with every finished call kept.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from monoscope.interpret.backends.base import (
    Backend,
    BackendError,
    CallResult,
    ChatRequest,
    ChatResponse,
    RetryableError,
)
from monoscope.interpret.cache import CallCache, call_key
from monoscope.interpret.pricing import PriceTable

MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens a chat format adds per message (role markers, separators) beyond its content."""


class BudgetExhausted(RuntimeError):
    """The next call could pass --budget-usd; nothing more is sent (everything so far is kept)."""


class ReplayMiss(RuntimeError):
    """--replay-only, and the cache does not hold this call."""


class CallsCancelled(RuntimeError):
    """The run is stopping (Ctrl-C): no new call is sent."""


class RetriesExhausted(BackendError):
    """A call that failed on every attempt (429, 5xx, timeouts, unreachable endpoint)."""


@dataclass
class CallLimits:
    max_concurrency: int = 4
    """Calls in flight at once."""
    requests_per_minute: float = 0
    """Requests sent per minute, retries included (0: no limit)."""
    tokens_per_minute: float = 0
    """Prompt + max completion tokens sent per minute (0: no limit)."""
    timeout_s: float = 120.0
    """Seconds one attempt may take."""
    max_retries: int = 6
    """Attempts after the first on a retryable error."""
    backoff_base_s: float = 1.0
    """First retry waits up to this long; each next one up to twice as long (full jitter)."""
    backoff_max_s: float = 60.0
    """Longest wait between attempts (a server's Retry-After is honoured beyond it)."""

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        for name in ("requests_per_minute", "tokens_per_minute", "max_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")


class RateLimiter:
    """A token bucket of `per_minute` units refilled continuously, holding at most a minute's
    worth. `acquire` books its units at once (the balance may go negative) and sleeps until the
    balance covers them, so concurrent callers are served in arrival order without busy waits."""

    def __init__(self, per_minute: float, clock=time.monotonic, sleep=time.sleep) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.level = self.capacity
        self.clock, self.sleep = clock, sleep
        self.stamp = clock()
        self._lock = threading.Lock()

    def acquire(self, amount: float = 1.0) -> float:
        """Take `amount` units (a request bigger than the bucket takes all of it); returns the
        seconds waited."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now
            self.level -= min(amount, self.capacity)
            wait = -self.level / self.rate if self.level < 0 else 0.0
        if wait > 0:
            self.sleep(wait)
        return wait


@dataclass
class CallStats:
    """What a client has done so far."""

    n_sent: int = 0
    """Calls answered by the backend (paid)."""
    n_cached: int = 0
    """Calls answered from the cache (free)."""
    n_retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    """Worst-case cost of the calls in flight."""
    backend_s: float = 0.0
    """Sum of the sent calls' latencies: the backend's own time, for the harness overhead."""

    def as_dict(self) -> dict:
        return asdict(self)


class LLMClient:
    """The `Caller` explainers and scorers use: cached, rate-limited, retried, budgeted calls.

    budget_usd: None or 0 for no budget; with one, the backend's model needs a price.
    clock, sleep: the time source and the wait of rate limits and backoff (tests pass fakes).
    """

    def __init__(
        self,
        backend: Backend,
        cache: CallCache,
        limits: CallLimits | None = None,
        prices: PriceTable | None = None,
        budget_usd: float | None = None,
        replay_only: bool = False,
        *,
        clock=time.monotonic,
        sleep=time.sleep,
        seed: int = 0,
    ) -> None:
        self.backend, self.cache = backend, cache
        self.limits = limits or CallLimits()
        prices = prices or PriceTable()
        self.budget_usd = budget_usd or None
        # Keeping a budget needs a price: PriceError naming --prices, before anything is sent.
        self.price = (
            prices.require(backend.name, backend.model)
            if self.budget_usd
            else prices.price(backend.name, backend.model)
        )
        self.replay_only = replay_only
        self.stats = CallStats()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.limits.max_concurrency)
        self._requests = RateLimiter(self.limits.requests_per_minute, clock, sleep)
        self._tokens = RateLimiter(self.limits.tokens_per_minute, clock, sleep)
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._cancelled = threading.Event()

    def key(self, request: ChatRequest) -> str:
        return call_key(self.backend.name, self.backend.model, request)

    def prompt_tokens(self, request: ChatRequest) -> int:
        """The prompt's tokens as the backend counts them, plus the chat format's overhead."""
        return sum(
            self.backend.count_tokens(content) + MESSAGE_OVERHEAD_TOKENS
            for _, content in request.messages
        )

    def estimate(self, request: ChatRequest) -> tuple[int, int, float | None, bool]:
        """(prompt tokens, max completion tokens, worst-case USD or None when the price is
        unknown, cached). A cached call costs 0: it will not be sent."""
        prompt = self.prompt_tokens(request)
        cached = self.key(request) in self.cache
        if cached:
            return prompt, request.max_tokens, 0.0, True
        usd = self.price.cost(prompt, request.max_tokens) if self.price else None
        return prompt, request.max_tokens, usd, False

    def cancel(self) -> None:
        """Send no new call from now on (calls in flight finish and are cached)."""
        self._cancelled.set()

    def call(self, request: ChatRequest) -> CallResult:
        """The request's answer: from the cache, or sent (and then cached). Thread-safe.

        Raises ReplayMiss, BudgetExhausted, CallsCancelled, BackendError (RetriesExhausted
        when every attempt failed)."""
        key = self.key(request)
        hit = self.cache.get(key)
        if hit is not None:
            with self._lock:
                self.stats.n_cached += 1
            return CallResult(hit[0], key, True, 0.0, float(hit[1]["latency_s"]))
        if self.replay_only:
            raise ReplayMiss(
                f"--replay-only: the call cache {self.cache.path} has no answer for call {key} "
                f"({self.backend.name} {self.backend.model!r})"
            )
        with self._slots:
            if self._cancelled.is_set():
                raise CallsCancelled("the run is stopping: no new calls")
            prompt = self.prompt_tokens(request)
            reserved = self._reserve(prompt, request.max_tokens)
            try:
                response, latency = self._send(request, prompt)
            finally:
                with self._lock:
                    self.stats.reserved_usd -= reserved
            cost = self._settle(response, latency)
        self.cache.put(key, self.backend.name, self.backend.model, request, response, latency, cost)
        return CallResult(response, key, False, cost or 0.0, latency)

    def _reserve(self, prompt_tokens: int, max_tokens: int) -> float:
        """Book the call's worst-case cost against the budget; BudgetExhausted if it may not
        fit. The prompt count is an estimate where the backend has no tokenizer."""
        worst = self.price.cost(prompt_tokens, max_tokens) if self.price else 0.0
        with self._lock:
            committed = self.stats.spent_usd + self.stats.reserved_usd
            if self.budget_usd is not None and committed + worst > self.budget_usd:
                raise BudgetExhausted(
                    f"budget ${self.budget_usd:.4f} reached: ${self.stats.spent_usd:.4f} spent, "
                    f"${self.stats.reserved_usd:.4f} in flight, and the next call may cost up "
                    f"to ${worst:.4f}"
                )
            self.stats.reserved_usd += worst
        return worst

    def _settle(self, response: ChatResponse, latency: float) -> float | None:
        cost = (
            self.price.cost(response.prompt_tokens, response.completion_tokens)
            if self.price
            else None
        )
        with self._lock:
            self.stats.n_sent += 1
            self.stats.prompt_tokens += response.prompt_tokens
            self.stats.completion_tokens += response.completion_tokens
            self.stats.spent_usd += cost or 0.0
            self.stats.backend_s += latency
        return cost

    def _send(self, request: ChatRequest, prompt_tokens: int) -> tuple[ChatResponse, float]:
        """(response, latency s) of the first attempt that succeeds; RetriesExhausted when the
        last allowed attempt fails too. BackendError passes through at once."""
        started = time.monotonic()
        attempts = self.limits.max_retries + 1
        for attempt in range(attempts):
            self._requests.acquire(1)
            self._tokens.acquire(prompt_tokens + request.max_tokens)
            t0 = time.perf_counter()
            try:
                return self.backend.chat(request, self.limits.timeout_s), time.perf_counter() - t0
            except RetryableError as err:
                last = err
            if attempt + 1 < attempts:
                with self._lock:
                    self.stats.n_retries += 1
                self._sleep(self._backoff(attempt, last.retry_after))
        raise RetriesExhausted(
            f"{self.backend.name} backend, model {self.backend.model!r}: gave up after "
            f"{attempts} attempts in {time.monotonic() - started:.1f} s; last error: {last}"
        ) from last

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before the next attempt: the server's hint when it gave one, else full
        jitter, uniform in [0, min(max, base * 2^attempt)] (spreads clients that failed
        together)."""
        if retry_after is not None:
            return retry_after
        cap = min(self.limits.backoff_max_s, self.limits.backoff_base_s * 2**attempt)
        return self._rng.uniform(0, cap)


@dataclass
class JobsSummary:
    """How a `run_jobs` run ended."""

    done: list
    """Items whose function returned (on_done was called with the result)."""
    failed: list
    """(item, error message) of items whose function raised a per-item error."""
    not_done: list
    """Items never finished: not started, or stopped by the budget (their finished calls are
    cached: a rerun pays only for the rest)."""
    stopped_by_budget: bool = False
    stop_reason: str = ""
    """Why the run stopped early ('' when every item was tried)."""


def _progress(total: int, desc: str, unit: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not show, dynamic_ncols=True)


def _stops_run(err: BaseException) -> bool:
    """Whether `err` stops the whole run rather than failing its item alone: the budget, a
    cancelled run, and backend errors (a refused key, an unknown model or an endpoint down will
    fail every item the same way)."""
    return isinstance(err, BudgetExhausted | CallsCancelled | BackendError)


def run_jobs(
    items: Iterable,
    fn: Callable,
    *,
    max_concurrency: int,
    on_done: Callable,
    progress_desc: str | None = "",
    client: LLMClient | None = None,
    progress: bool = True,
    unit: str = "item",
) -> JobsSummary:
    """fn(item) over a thread pool; on_done(item, result) in the calling thread as each one
    finishes (so the caller writes its database from one thread). The progress bar shows
    `unit`s/s, and the spend when a client is given; progress=False or progress_desc=None hide it.

    An error of one item (a ReplayMiss, a bug on one input) is recorded in `failed` and the run
    goes on. On BudgetExhausted or a BackendError no new item starts; those in flight finish.
    On KeyboardInterrupt (or an error in on_done) pending items are dropped, in-flight calls
    finish (and are cached), and the exception is re-raised."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    queue = list(items)
    summary = JobsSummary(done=[], failed=[], not_done=[])
    show = progress and progress_desc is not None
    bar = _progress(len(queue), progress_desc or "", unit, show)
    pool = ThreadPoolExecutor(max_workers=max_concurrency)
    running: dict = {}
    position = 0
    try:
        while position < len(queue) or running:
            while position < len(queue) and len(running) < max_concurrency:
                if summary.stop_reason:
                    break
                running[pool.submit(fn, queue[position])] = queue[position]
                position += 1
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                _collect(future, running.pop(future), summary, on_done)
                bar.update(1)
                if client is not None:
                    bar.set_postfix_str(f"${client.stats.spent_usd:.4f} spent", refresh=False)
    except BaseException:
        if client is not None:
            client.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)
    summary.not_done += queue[position:]
    return summary


def _collect(future, item, summary: JobsSummary, on_done: Callable) -> None:
    """Record one finished item in `summary`."""
    err = future.exception()
    if err is None:
        on_done(item, future.result())
        summary.done.append(item)
        return
    if not isinstance(err, Exception):
        raise err
    if isinstance(err, BudgetExhausted | CallsCancelled):
        summary.not_done.append(item)
    else:
        summary.failed.append((item, f"{type(err).__name__}: {err}"))
    if _stops_run(err):
        summary.stopped_by_budget |= isinstance(err, BudgetExhausted)
        summary.stop_reason = summary.stop_reason or str(err)
