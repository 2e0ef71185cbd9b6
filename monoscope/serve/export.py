"""`monoscope export-site`: the browser as a static folder that works from file:// or any host.

Chromium refuses fetch() and module scripts on file:// pages, so every data file is a script
calling `MS.receive(name, data)` (JSONP-style), which the front end loads by adding a <script>
tag. Layout of the site:

index.html, assets/        the front end (the same files `monoscope serve` serves)
config.js                  {"mode": "static", shard_size, shard_digits, index_shard_size,
                           index_shards, index_digits, search_shards, search_digits, similar}
data/meta.js               meta record
data/index/NNNN.js         the summaries of features INDEX_SHARD*NNNN.., column by column: a
                           page of the list by id loads the files it shows, a sorted list or
                           a search loads them all (once)
data/search/NN.js          token -> feature ids, for the tokens whose token_shard is NN (a
                           search loads the files of its words)
data/map.js                map points (a sample of at most records.MAP_POINTS)
data/features/NNNN.js      feature records shard_size*NNNN .. shard_size*(NNNN+1)-1, each
                           with `similar`: its explanation's nearest explanations
monoscope-site.json        marks the folder as a site, so a re-export may replace it

index.html carries the server's Content-Security-Policy as a <meta> tag (security.META_CSP):
scripts only from the site's own folder, none inline. A meta policy cannot forbid framing
(browsers ignore frame-ancestors there), nor set the other headers: a host serving the site
should send those itself. 'self' covers a file:// page's sibling files (tested in Chromium).

Search by meaning needs the embedding model, which a static page cannot run; instead the export
embeds the explanations (when an embedding model is installed; a warning says so when not) and
stores each explained feature's nearest explanations. config.js's `similar` is
{"k": k, "note": null}, or {"k": 0, "note": why there are none}.

The site is built in a temp folder beside OUT and renamed into place; a folder that is not a
site is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from monoscope.artifacts import temp_dir_beside
from monoscope.serve.app import STATIC, front_end_config
from monoscope.serve.catalog import Catalog
from monoscope.serve.meaning import Embedder, MeaningIndex, MeaningUnavailable
from monoscope.serve.store import FeatureStore
from monoscope.web.security import META_CSP

SITE_MARKER = "monoscope-site.json"
SITE_FORMAT_VERSION = 2
"""2: the index and the token search sharded (1: one data/index.js and data/search.js)."""
SHARD_SIZE = 256
INDEX_SHARD = 1 << 14
"""Features per index file (about 1 MB of summaries without explanations)."""
SEARCH_SHARD_IDS = 1 << 18
"""Feature ids per search file, about: the token index is split into enough files by hash."""
SIMILAR = 8
"""Nearest explanations stored per explained feature."""


def export_site(
    db: str | Path,
    out: str | Path,
    shard_size: int = SHARD_SIZE,
    similar: int = SIMILAR,
    embedder: Callable[[], Embedder] | None = None,
) -> Path:
    """Write the static site of feature store `db` to folder `out`; returns `out`.

    similar: nearest explanations stored per explained feature (0: none), embedded by
    `embedder()` (default: monoscope.interpret.embedding.SentenceEmbedder)."""
    if shard_size <= 0:
        raise ValueError(f"shard size must be a positive number of features, got {shard_size}")
    if similar < 0:
        raise ValueError(f"similar must be 0 or more explanations, got {similar}")
    out = Path(out)
    _check_target(out)
    store = FeatureStore(db)
    table, note = _similar_explanations(store, similar, embedder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    try:
        _write_site(store, tmp, shard_size, table, note)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def shard_name(index: int, digits: int) -> str:
    return f"features/{index:0{digits}d}"


def _check_target(out: Path) -> None:
    if out.is_file() or out.is_symlink():
        raise ValueError(f"{out} is a file; export-site writes a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARKER).is_file():
        raise ValueError(
            f"refusing to overwrite {out}: it is not a monoscope site (no {SITE_MARKER}); "
            "choose a new or empty folder"
        )


def _similar_explanations(
    store: FeatureStore, k: int, embedder: Callable[[], Embedder] | None
) -> tuple[dict[int, list[dict[str, Any]]] | None, str | None]:
    """({feature: [similar]}, None), or (None, why there is no table)."""
    if k == 0:
        return None, "this site was exported without similar explanations (similar=0)"
    index = MeaningIndex(store.catalog, embedder)
    try:
        return index.similar_table(k), None
    except MeaningUnavailable as err:
        warnings.warn(f"{err}; exporting without similar explanations", stacklevel=3)
        return None, f"this site was exported without an embedding model ({err})"


def _write_site(
    store: FeatureStore,
    root: Path,
    shard_size: int,
    similar: dict[int, list[dict[str, Any]]] | None,
    note: str | None,
) -> None:
    shutil.copytree(STATIC, root, dirs_exist_ok=True)
    _add_policy(root / "index.html")
    n = store.n_features
    n_shards = -(-n // shard_size)
    digits = _digits(n_shards)
    n_index = max(1, -(-n // INDEX_SHARD))
    n_search = max(1, -(-sum(map(len, store.catalog.token_index.values())) // SEARCH_SHARD_IDS))
    k = max((len(v) for v in similar.values()), default=0) if similar else 0
    config = front_end_config(
        "static",
        shard_size=shard_size,
        shard_digits=digits,
        index_shard_size=INDEX_SHARD,
        index_shards=n_index,
        index_digits=_digits(n_index),
        search_shards=n_search,
        search_digits=_digits(n_search),
        similar={"k": k, "note": note},
    )
    (root / "config.js").write_text(config, encoding="utf-8")
    for folder in ("features", "index", "search"):
        (root / "data" / folder).mkdir(parents=True)
    _write_data(root, "meta", store.meta_record())
    _write_index(root, store.catalog, n_index)
    _write_search(root, store.catalog.token_index, n_search)
    _write_data(root, "map", store.map())
    for shard in range(n_shards):
        start = shard * shard_size
        records = store.feature_range(start, min(start + shard_size, n))
        for record in records:
            record["similar"] = None if similar is None else similar.get(record["id"], [])
        _write_data(root, shard_name(shard, digits), {"first": start, "features": records})
    marker = {
        "format": "monoscope.site",
        "version": SITE_FORMAT_VERSION,
        "source": str(store.path.resolve()),
        "n_features": n,
        "shard_size": shard_size,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (root / SITE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _digits(files: int) -> int:
    """Digits of the files' numbers: at least 4 (0000.js), more when there are more files."""
    return max(4, len(str(max(files - 1, 0))))


def token_shard(word: str, shards: int) -> int:
    """The search file holding a token's entry: FNV-1a (32-bit) over its code points, as
    static/assets/js/search.js's tokenShard."""
    h = 0x811C9DC5
    for ch in word:
        h = ((h ^ ord(ch)) * 16777619) & 0xFFFFFFFF
    return h % shards


def _write_index(root: Path, cat: Catalog, files: int) -> None:
    """data/index/NNNN.js: the summary columns of INDEX_SHARD features each."""
    for i in range(files):
        part = slice(i * INDEX_SHARD, (i + 1) * INDEX_SHARD)
        columns = {
            "first": i * INDEX_SHARD,
            "density": cat.density[part].tolist(),
            "max_act": cat.max_act[part].tolist(),
            "mean_act": cat.mean_act[part].tolist(),
            "explanation": cat.explanation[part],
            "score": cat.score[part],
            "top_tokens": cat.top_tokens[part],
        }
        _write_data(root, f"index/{i:0{_digits(files)}d}", columns)


def _write_search(root: Path, token_index: dict[str, list[int]], files: int) -> None:
    """data/search/NNNN.js: {"tokens": {token: ids}} of the tokens token_shard puts there."""
    parts: list[dict[str, list[int]]] = [{} for _ in range(files)]
    for word, ids in token_index.items():
        parts[token_shard(word, files)][word] = ids
    for i, tokens in enumerate(parts):
        _write_data(root, f"search/{i:0{_digits(files)}d}", {"tokens": tokens})


def _add_policy(index: Path) -> None:
    """The export's index.html with the policy and the referrer policy as <meta> tags."""
    charset = '<meta charset="utf-8">\n'
    page = index.read_text(encoding="utf-8")
    if charset not in page:
        raise RuntimeError(f"{index} has no {charset.strip()} line to put the policy after")
    policy = (
        f'<meta http-equiv="Content-Security-Policy" content="{META_CSP}">\n'
        '<meta name="referrer" content="no-referrer">\n'
    )
    index.write_text(page.replace(charset, charset + policy, 1), encoding="utf-8")


def _write_data(root: Path, name: str, data: Any) -> None:
    """data/<name>.js: one call to MS.receive, the JSON inline."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    text = f"MS.receive({json.dumps(name)},{payload});\n"
    (root / "data" / f"{name}.js").write_text(text, encoding="utf-8")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished site onto `out`; a previous site is moved aside first, then removed."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old)
