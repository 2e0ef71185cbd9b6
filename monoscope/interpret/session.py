"""What every interpret command opens first: the feature store (read-write, migrated to the
current schema) and an LLM client with its call cache, limits, prices and budget."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from monoscope.analyze import schema
from monoscope.interpret.config import LLMOptions

DEFAULT_LOCAL_MODEL = "smollm2-135m"
CACHE_FILE = "llm_cache.sqlite"


def open_store(db: str | Path) -> sqlite3.Connection:
    """A writable connection to a finished feature store, migrated to schema.SCHEMA_VERSION.

    FeatureStoreError when it is missing, not a store, or `analyze` has not finished it.
    """
    path = Path(db)
    conn = schema.open_readonly(path)  # refuses a missing file or another program's database
    try:
        complete = schema.read_meta(conn).get("complete", False)
    finally:
        conn.close()
    if not complete:
        raise schema.FeatureStoreError(
            f"{path}: `monoscope analyze` has not finished this store; rerun it to complete the "
            "store before explaining its features"
        )
    conn = sqlite3.connect(path, timeout=30)
    schema.migrate(conn)
    return conn


def cache_path(opts: LLMOptions) -> Path:
    return Path(opts.cache) if opts.cache else Path(opts.db).with_name(CACHE_FILE)


def model_name(opts: LLMOptions) -> str:
    return opts.model or DEFAULT_LOCAL_MODEL


def judge_name(opts: LLMOptions) -> str:
    """'backend:model', the name explanations and scores are stored under."""
    return f"{opts.backend}:{model_name(opts)}"


def open_client(opts: LLMOptions, lm=None):
    """An `LLMClient` for the options: the backend (built now, so a missing key or SDK fails
    before any work), the call cache, limits, prices and budget. `lm`: a loaded LanguageModel
    the local backend may use instead of loading its own."""
    from monoscope.interpret.backends.factory import make_backend
    from monoscope.interpret.cache import CallCache
    from monoscope.interpret.calls import CallLimits, LLMClient
    from monoscope.interpret.pricing import PriceTable

    extra = {"lm": lm} if lm is not None and opts.backend == "local" else {}
    backend = make_backend(opts.backend, model_name(opts), opts.base_url, **extra)
    prices = PriceTable.load(opts.prices) if opts.prices else PriceTable()
    limits = CallLimits(
        max_concurrency=opts.max_concurrency,
        requests_per_minute=opts.requests_per_minute,
        tokens_per_minute=opts.tokens_per_minute,
        timeout_s=opts.timeout,
        max_retries=opts.max_retries,
    )
    return LLMClient(
        backend,
        CallCache(cache_path(opts)),
        limits,
        prices,
        budget_usd=opts.budget_usd or None,
        replay_only=opts.replay_only,
    )
