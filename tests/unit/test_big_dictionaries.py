"""Big dictionaries downstream (issue 24, part 6), on small sizes: neighbours a tile at a time
(never [F, F]) and the approximate search, the analysis' state per feature and its encodes
bounded, the browser's list, search and map answering a page or a sample, the static site's
index and search sharded (the Python and JavaScript shard rules agreeing)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from monoscope.analyze import AnalyzeConfig, analyze, read_meta
from monoscope.analyze import neighbours as neighbours_module
from monoscope.analyze import runner as analyze_runner
from monoscope.analyze.accumulate import Accumulator, state_bytes_per_feature
from monoscope.analyze.neighbours import (
    approximate_neighbours,
    cosine_neighbours,
    exact_limit,
    feature_neighbours,
)
from monoscope.analyze.schema import open_readonly
from monoscope.harvest import HarvestConfig
from monoscope.harvest import run as harvest
from monoscope.sae import SAEConfig, build_sae
from monoscope.serve import FeatureStore, export_site, word_index
from monoscope.serve import catalog as catalog_module
from monoscope.serve import export as export_module
from monoscope.serve import records as records_module
from monoscope.serve.catalog import Catalog
from monoscope.testing import random_feature_store

SITE = "blocks.1.hook_resid_post"
JS = Path(__file__).resolve().parents[2] / "monoscope" / "serve" / "static" / "assets" / "js"


class Products(TorchFunctionMode):
    """Records the number of elements of every matmul's result."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm):
            self.sizes.append(out.numel())
        return out


def brute_force_neighbours(w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    unit = w / w.norm(dim=1, keepdim=True)
    full = unit @ unit.T
    full.fill_diagonal_(-2)
    top = full.topk(k, dim=1)
    return top.indices, top.values


# -- neighbours ------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [200, 2000, 1 << 20])
def test_blocked_neighbours_equal_the_full_matrix_and_stay_in_their_tiles(block):
    w = torch.randn(121, 12, generator=torch.Generator().manual_seed(0))
    with Products() as products:
        index, cosine = cosine_neighbours(w, 6, block_elements=block)
    expected_index, expected_cosine = brute_force_neighbours(w, 6)
    assert torch.equal(index, expected_index)
    torch.testing.assert_close(cosine, expected_cosine)
    assert max(products.sizes) <= block  # never more similarities at once than asked
    if block < 121 * 121:
        assert len(products.sizes) > 1


def test_approximate_neighbours_find_clustered_neighbours_without_the_full_matrix():
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(30, 16, generator=gen)
    w = centres[torch.randint(0, 30, (2000,), generator=gen)]
    w = w + 0.2 * torch.randn(2000, 16, generator=gen)
    with Products() as products:
        index, cosine = approximate_neighbours(w, 8)
    exact, _ = brute_force_neighbours(w, 8)
    recall = np.mean(
        [len(set(a) & set(b)) / 8 for a, b in zip(index.tolist(), exact.tolist(), strict=True)]
    )
    assert recall > 0.9
    assert (index >= 0).all() and (index != torch.arange(2000)[:, None]).all()
    assert (cosine[:, :-1] >= cosine[:, 1:]).all()  # closest first
    unit = w / w.norm(dim=1, keepdim=True)
    torch.testing.assert_close(cosine, (unit[:, None, :] * unit[index]).sum(-1))
    assert max(products.sizes) < 2000 * 2000 / 10


def test_a_row_whose_lists_hold_too_few_others_is_searched_exactly():
    w = torch.randn(20, 6, generator=torch.Generator().manual_seed(2))
    index, cosine = approximate_neighbours(w, 10, probes=1)  # 4 lists of ~5: too few
    _, expected_cosine = brute_force_neighbours(w, 10)
    torch.testing.assert_close(cosine, expected_cosine)
    assert (index >= 0).all()


def test_feature_neighbours_chooses_the_search_by_size_and_skips_k_zero():
    w = torch.randn(64, 8, generator=torch.Generator().manual_seed(3))
    assert feature_neighbours(w, 4, exact_up_to=64)[2] == "exact"
    assert feature_neighbours(w, 4, exact_up_to=0)[2] == "exact"
    assert feature_neighbours(w, 4, exact_up_to=63)[2] == "approximate"
    with Products() as products:
        index, cosine, search = feature_neighbours(w, 0, exact_up_to=0)
    assert search == "none" and index.shape == cosine.shape == (64, 0) and not products.sizes


def test_the_default_exact_search_is_larger_on_an_accelerator(monkeypatch):
    assert exact_limit(torch.device("cpu")) == 1 << 17
    assert exact_limit(torch.device("cuda", 1)) == exact_limit(torch.device("mps")) == 1 << 21
    w = torch.randn(64, 8, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(neighbours_module, "EXACT_ON_CPU", 63)
    assert feature_neighbours(w, 4)[2] == "approximate"  # the CPU's limit, as w is there
    monkeypatch.setattr(neighbours_module, "EXACT_ON_CPU", 64)
    assert feature_neighbours(w, 4)[2] == "exact"


# -- the analysis -----------------------------------------------------------------------------


def accumulator(n_features: int, cfg: AnalyzeConfig) -> Accumulator:
    neighbours = torch.zeros(n_features, cfg.neighbours, dtype=torch.int64)
    return Accumulator.for_config(cfg, n_features, neighbours)


def state_bytes(acc: Accumulator) -> int:
    return sum(t.nbytes for t in acc.state.values())


def test_the_state_is_a_stated_size_per_feature_whatever_the_tokens():
    cfg = AnalyzeConfig(top_n=7, neighbours=3)
    per_feature = state_bytes_per_feature(cfg)
    # top: 7 x (4 + 8); fine samples: 10 x 4 x 3 x (8 + 4 + 8); hist 50 x 8; cooccur 3 x 8;
    # n_fired, act_sum, act_max, exponent
    assert per_feature == 7 * 12 + 10 * 4 * 3 * 20 + 50 * 8 + 3 * 8 + 8 + 8 + 4 + 4
    small, big = accumulator(10, cfg), accumulator(1000, cfg)
    assert state_bytes(big) - state_bytes(small) == 990 * per_feature
    gen = torch.Generator().manual_seed(0)
    before = state_bytes(big)
    sizes = []
    for step in range(5):
        f = torch.rand(300, 1000, generator=gen) * (torch.rand(300, 1000, generator=gen) < 0.05)
        big.update(f, torch.arange(step * 300, (step + 1) * 300))
        big.flush()
        sizes.append(state_bytes(big))
    # The first firing sets the histogram's edges (n_bins + 1 of them); then nothing grows.
    assert sizes == [before + 51 * 8] * 5


@pytest.fixture(scope="module")
def store(tiny_llama, corpus_file, tmp_path_factory):
    cfg = HarvestConfig(
        model=tiny_llama.name,
        sites=[SITE],
        corpus=str(corpus_file),
        tokens=600,
        out=str(tmp_path_factory.mktemp("bigdict") / "acts"),
        context=32,
        batch_tokens=128,
        heldout_fraction=0.0,
        progress=False,
    )
    return harvest(cfg, tiny_llama)


def test_big_dictionaries_encode_fewer_rows_at_a_time(store, tiny_llama, tmp_path, monkeypatch):
    sae = build_sae(SAEConfig(arch="topk", d_in=32, n_features=256, k=4, site=SITE)).eval()
    options = dict(map=False, batch_size=200, progress=False, top_n=5, window=8)
    reference = analyze(sae, store, model=tiny_llama, out=tmp_path / "a.db", **options)
    encoded: list[int] = []
    encode = analyze_runner.encode

    def spy(sae, x):
        encoded.append(x.shape[0] * sae.cfg.n_features)
        return encode(sae, x)

    monkeypatch.setattr(analyze_runner, "encode", spy)
    monkeypatch.setattr(analyze_runner, "ENCODE_ELEMENTS", 256 * 30)  # 30 rows at a time
    small = analyze(sae, store, model=tiny_llama, out=tmp_path / "b.db", **options)
    assert encoded and max(encoded) <= 256 * 30
    # The same features, examples and neighbours (the histograms' edges come from the first
    # encoded batch, so they may differ).
    for sql in (
        "SELECT id, n_fired, max_act, mean_act FROM features ORDER BY id",
        "SELECT feature, kind, bucket, rank, activation, context, position, tokens, acts "
        "FROM examples ORDER BY feature, kind, bucket, rank",
        "SELECT * FROM neighbours ORDER BY feature, rank",
    ):
        assert rows(small, sql) == rows(reference, sql)
    meta = read_meta(open_readonly(small))
    # The default limit is recorded as the number it stood for: the CPU's.
    assert meta["neighbour_search"] == "exact" and meta["params"]["exact_neighbours"] == 1 << 17


def test_the_approximate_search_is_recorded(store, tiny_llama, tmp_path):
    sae = build_sae(SAEConfig(arch="topk", d_in=32, n_features=256, k=4, site=SITE)).eval()
    out = analyze(
        sae, store, model=tiny_llama, out=tmp_path / "f.db", map=False, progress=False,
        exact_neighbours=100,
    )  # fmt: skip
    assert read_meta(open_readonly(out))["neighbour_search"] == "approximate"
    assert rows(out, "SELECT count(*) FROM neighbours WHERE neighbour < 0") == [(0,)]


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# -- the browser ------------------------------------------------------------------------------


def catalog(n: int, seed: int = 0, explanation: list[str | None] | None = None) -> Catalog:
    rng = np.random.default_rng(seed)
    words = ["bridge", "river", "cat", "Code", "golden gate"]
    explanation = explanation or [
        None if rng.random() < 0.3 else f"{words[i % 5]} {rng.choice(words)} x{i}" for i in range(n)
    ]
    return Catalog(
        density=rng.random(n).round(3),  # ties, broken by id
        max_act=rng.random(n),
        mean_act=rng.random(n),
        explanation=explanation,
        score=[None if rng.random() < 0.4 else round(float(rng.random()), 2) for _ in range(n)],
        top_tokens=[[] for _ in range(n)],
        token_index={"the": sorted(rng.choice(n, 50, replace=False).tolist())},
        has_map=False,
    )


def brute_force_search(cat: Catalog, query: str, sort: str, order: str) -> list[int]:
    ids = list(range(cat.n_features))
    if query.startswith("#"):
        ids = [int(query[1:])]
    for word in query.lower().split() if not query.startswith("#") else ():
        tokens = set(cat.token_index.get(word, ()))
        ids = [i for i in ids if i in tokens or word in (cat.explanation[i] or "").lower()]
    if sort == "id":
        return ids[::-1] if order == "desc" else ids
    values = cat.score if sort == "score" else getattr(cat, sort).tolist()
    sign = -1 if order == "desc" else 1
    return sorted(ids, key=lambda i: (values[i] is None, sign * (values[i] or 0), i))


@pytest.mark.parametrize("query", ["", "river", "the", "golden gate", "x1", "nothing", "#17"])
@pytest.mark.parametrize(("sort", "order"), [("id", "desc"), ("density", "asc"),
                                             ("max_act", "desc"), ("score", "desc")])  # fmt: skip
def test_search_pages_equal_a_brute_force_search(query, sort, order):
    cat = catalog(500)
    expected = brute_force_search(cat, query, sort, order)
    for offset in (0, 40, 480):
        page = cat.search(query, sort, order, offset, 25)
        assert page["total"] == len(expected)
        assert [item["id"] for item in page["items"]] == expected[offset : offset + 25]


PIECES = [
    *("Straße", "STRASSE", "ÉCOLE", "école", "ΟΔΟΣ", "σοφία", "東京タワーの展望台", "日本語"),
    *("don't", "e.g.", "C++", "++", "x_1", "__init__", "42", "3.14", "U.S.", "(parens)", "a-b"),
    *("—", "🙂ok", "İstanbul", "ﬁne", "\u212aelvin", "the", "then", "other", "river", "a", "E"),
    *("x\x00y", "\x00", "lone\ud800"),
]
"""Pieces of explanations: Unicode (case folding that changes lengths, a final sigma, CJK
without spaces), punctuation, underscores, digits, NULs and a lone surrogate."""
GAPS = [" ", "  ", "", "\n", "\t", "\xa0", "\u3000", "\x1c", ", ", " - "]
"""What joins them: whitespace of several kinds, or nothing (a token of two pieces)."""
ODD_WORDS = [
    *("straße", "strasse", "ss", "ß", "école", "e", "é", "οδος", "ος", "ς", "σ", "東京", "の"),
    *("don't", "don", "'", "e.g.", ".", "c++", "++", "+", "x_1", "_", "__", "42", "3.", "u.s."),
    *("(", "a-b", "—", "🙂", "i̇stanbul", "ﬁ", "k", "the", "then", "he", "zzz", "\x00"),
    *("x\x00y", "\ud800", "alphabeta", "ab", "eriver", "thethe"),
]
"""Query words: parts of PIECES, words across two pieces or two texts, and words of none."""


def odd_explanations(n: int, seed: int, nul: bool = True) -> list[str | None]:
    """n random explanations of PIECES (without the NUL ones unless `nul`), some missing,
    empty or blank; "alpha" ends one and "beta" starts the next, and one repeats a word."""
    rng = np.random.default_rng(seed)
    pieces = [p for p in PIECES if nul or "\x00" not in p]
    out: list[str | None] = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.15:
            out.append([None, "", "   "][int(kind * 20)])
            continue
        words = rng.choice(pieces, rng.integers(1, 7)).tolist()
        gaps = rng.choice(GAPS, len(words) + 1).tolist()
        text = "".join(g + w for g, w in zip(gaps, words, strict=False))
        out.append(text + gaps[-1] if rng.random() < 0.3 else text)
    out[n // 2 : n // 2 + 3] = ["gamma Alpha", "BETA river", "river river,river"]
    return out


def query_words(texts: list[str | None], seed: int, n: int = 150) -> list[str]:
    """ODD_WORDS and n random parts of the texts' whitespace-separated tokens."""
    rng = np.random.default_rng(seed)
    tokens = [t for e in texts for t in (e or "").lower().split()]
    words = list(ODD_WORDS)
    for token in rng.choice(tokens, n):
        start = int(rng.integers(len(token)))
        words.append(token[start : int(rng.integers(start + 1, len(token) + 1))])
    return words


@pytest.mark.parametrize("share", [0.0, 2.0], ids=["over-all-pairs", "gathered-per-token"])
@pytest.mark.parametrize(
    ("chunk", "nul"),
    [(7, True), (10**5, True), (10**5, False)],
    ids=["chunks-some-with-a-nul", "one-chunk-split-text-by-text", "one-chunk-split-at-once"],
)
def test_the_word_index_finds_the_texts_holding_a_word_as_a_substring(
    share, chunk, nul, monkeypatch
):
    """Whichever way a word's tokens are united and the texts were split, the index finds
    what `word in text.lower()` does, and nothing across two neighbouring texts."""
    monkeypatch.setattr(word_index, "SCAN_SHARE", share)
    texts = odd_explanations(300, seed=chunk + nul, nul=nul)
    index = word_index.WordIndex(texts, chunk=chunk)
    folded = [(e or "").lower() for e in texts]
    for word in query_words(texts, seed=chunk):
        found = np.flatnonzero(index.containing(word)).tolist()
        assert found == [i for i, e in enumerate(folded) if word in e], word
    assert not index.containing("alphabeta").any() and index.containing("alpha").any()
    assert index.containing("ΟΔΟΣ".lower()).any()  # a final sigma, folded as in one text
    with pytest.raises(ValueError, match="whitespace"):
        index.containing("two words")


def test_an_empty_index_finds_nothing():
    for texts in ([], [None, "", " \t "]):
        index = word_index.WordIndex(texts)
        assert index.n_tokens == 1 and index.containing("a").tolist() == [False] * len(texts)


@pytest.mark.parametrize("share", [0.0, 2.0], ids=["over-all-pairs", "gathered-per-token"])
def test_either_way_of_finding_a_word_and_the_kept_words_give_the_same_features(share, monkeypatch):
    """Whichever way a word's tokens are united, and with the kept words' matches evicted and
    found again, a search gives what a brute-force one does (explanations or top tokens)."""
    monkeypatch.setattr(word_index, "SCAN_SHARE", share)
    monkeypatch.setattr(catalog_module, "WORDS_KEPT", 2)
    cat = catalog(500)
    for query in ["river", "cat", "golden gate", "river", "x1", "cat code", "nothing", "river"]:
        page = cat.search(query, "id", "asc", 0, 500)
        assert [item["id"] for item in page["items"]] == brute_force_search(cat, query, "id", "asc")
    assert len(cat._word_hits) <= 2
    cat = catalog(400, explanation=odd_explanations(400, seed=1))
    for query in ["Straße école", "THE e.g.", "don't", "the", "ος σ", "++ x_1", "e", "alphabeta"]:
        page = cat.search(query, "id", "desc", 0, 400)
        assert [item["id"] for item in page["items"]] == brute_force_search(
            cat, query, "id", "desc"
        )


def test_the_api_answers_a_page_and_a_sample(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from monoscope.serve.app import MAX_PAGE, create_app

    db = random_feature_store(tmp_path / "features.db", n_features=600)
    monkeypatch.setattr(records_module, "MAP_POINTS", 100)
    client = TestClient(create_app(FeatureStore(db)), base_url="http://127.0.0.1")
    page = client.get("/api/features", params={"sort": "density", "limit": MAX_PAGE}).json()
    assert page["total"] == 600 and len(page["items"]) == MAX_PAGE
    assert client.get("/api/features", params={"limit": MAX_PAGE + 1}).status_code == 422
    points = client.get("/api/map").json()
    assert points["total"] == 600 and len(points["ids"]) == 100
    assert points["ids"] == list(range(0, 600, 6))
    assert client.get("/api/map").json() == points


# -- the static site --------------------------------------------------------------------------


def run_js(script: str) -> object:
    """Run `script` under node with the front end's search.js loaded; its printed JSON."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the JavaScript half of the check needs it")
    prelude = f"global.window = {{ MS: {{}} }};\nrequire({json.dumps(str(JS / 'search.js'))});\n"
    done = subprocess.run(
        ["node", "-e", prelude + script], capture_output=True, text=True, check=True, timeout=30
    )
    return json.loads(done.stdout)


def test_python_and_javascript_put_a_token_in_the_same_search_file():
    words = ["the", "bridge", "é", "日本", "🙂x", "", "constructor", "a" * 40]
    shards = run_js(
        f"console.log(JSON.stringify({json.dumps(words)}.map("
        "(w) => [3, 7, 64].map((n) => window.MS.search.tokenShard(w, n)))));"
    )
    assert shards == [[export_module.token_shard(w, n) for n in (3, 7, 64)] for w in words]


def test_javascript_pages_by_id_equal_the_server():
    cat = catalog(90)
    queries = [
        {"offset": 0, "limit": 25},
        {"order": "desc", "offset": 80, "limit": 25},
        {"query": "#17", "sort": "density"},
        {"query": "17", "offset": 1},
        {"query": "#900"},
    ]
    pages = run_js(
        f"console.log(JSON.stringify({json.dumps(queries)}.map("
        "(q) => window.MS.search.idPage(90, q))));"
    )
    for q, page in zip(queries, pages, strict=True):
        server = cat.search(q.get("query", ""), q.get("sort", "id"), q.get("order", "asc"),
                            q.get("offset", 0), q.get("limit", 50))  # fmt: skip
        assert page["total"] == server["total"]
        assert page["ids"] == [item["id"] for item in server["items"]]
    assert (
        run_js("console.log(JSON.stringify(window.MS.search.idPage(90, {query: 'cat'})));") is None
    )


def test_the_static_index_and_search_are_sharded(tmp_path, monkeypatch):
    db = random_feature_store(tmp_path / "features.db", n_features=150)
    monkeypatch.setattr(export_module, "INDEX_SHARD", 64)
    monkeypatch.setattr(export_module, "SEARCH_SHARD_IDS", 50)
    site = export_site(db, tmp_path / "site", similar=0)
    store = FeatureStore(db)
    index_files = sorted((site / "data" / "index").iterdir())
    assert [p.name for p in index_files] == ["0000.js", "0001.js", "0002.js"]
    columns: dict[str, list] = {}
    for path in index_files:
        name, shard = read_data(path)
        assert name == f"index/{path.stem}" and shard["first"] == 64 * int(path.stem)
        for key, values in shard.items():
            columns.setdefault(key, []).extend(values if key != "first" else [])
    assert columns["max_act"] == store.catalog.max_act.tolist()
    assert columns["top_tokens"] == store.catalog.top_tokens
    search_files = sorted((site / "data" / "search").iterdir())
    pairs = sum(map(len, store.catalog.token_index.values()))
    assert len(search_files) == -(-pairs // 50) > 1
    tokens: dict[str, list[int]] = {}
    for i, path in enumerate(search_files):
        _, shard = read_data(path)
        for word, ids in shard["tokens"].items():
            assert export_module.token_shard(word, len(search_files)) == i
            tokens[word] = ids
    assert tokens == store.catalog.token_index
    config = (site / "config.js").read_text()
    assert '"index_shards": 3' in config and f'"search_shards": {len(search_files)}' in config
    assert not (site / "data" / "index.js").exists()


def read_data(path: Path) -> tuple[str, dict]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("MS.receive(") and text.endswith(");\n")
    name, _, payload = text[len("MS.receive(") : -3].partition(",")
    return json.loads(name), json.loads(payload)


def test_the_sae_hash_equals_the_saved_files_without_building_its_bytes(monkeypatch):
    import hashlib

    from safetensors.torch import save

    from monoscope.analyze import opening

    class Odd(torch.nn.Module):
        """Tensors of several dtypes and shapes, one not contiguous."""

        def __init__(self) -> None:
            super().__init__()
            self.W_enc = torch.nn.Parameter(torch.randn(40, 7).T)  # [7, 40], transposed
            self.register_buffer("count", torch.arange(5))  # int64
            self.register_buffer("low", torch.randn(3, 2).half())
            self.register_buffer("scalar", torch.tensor(2.5))
            self.register_buffer("empty", torch.zeros(0, 4))

    module = Odd()
    monkeypatch.setattr(opening, "HASH_BYTES", 24)  # several chunks per tensor
    weights = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    assert opening._sae_sha256(module) == hashlib.sha256(save(weights)).hexdigest()
    assert save(weights).startswith(opening.safetensors_header(weights))
