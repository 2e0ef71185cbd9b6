"""The feature browser in real headless Chromium, on a real (tiny) pipeline: a tiny random model
-> harvest -> train an SAE -> analyze -> `monoscope serve` on a free 127.0.0.1 port, and the
exported static site opened from file://; then the same store with explanations and scores
(written as the interpret stage writes them), in both; then a store harvested from a corpus of
markup, which every page must show as text, under the server's Content-Security-Policy.

Needs Debian's chromium (/usr/bin/chromium; .ci/run installs it) and playwright's pip wheel
(its driver only: no browser is downloaded). Without them the test is skipped, except in CI
(CI=true), where it fails. Screenshots go to $MONOSCOPE_SCREENSHOTS or a temp folder; the
folder is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest

from monoscope.analyze import analyze
from monoscope.harvest import HarvestConfig
from monoscope.harvest import run as harvest
from monoscope.serve import FeatureStore, export_site, open_app
from monoscope.testing import harvest_tiny, tiny_sae, write_interpretation
from monoscope.train import TrainConfig
from monoscope.train import run as train
from monoscope.web.security import CSP, META_CSP
from monoscope.web.server import background_server

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SITE = "blocks.1.hook_resid_post"


def require_browser():
    """playwright's sync API, or skip (fail in CI) when it or chromium is missing."""
    missing = None
    try:
        from playwright import sync_api
    except ImportError:
        missing = 'playwright (pip install "monoscope[browser]")'
    if missing is None and not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} (apt-get install chromium)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test needs {missing}; .ci/run installs it")
        pytest.skip(f"needs {missing}")
    return sync_api


@pytest.fixture(scope="module")
def db(tiny_llama, corpus_file, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    store = harvest(
        HarvestConfig(
            model=tiny_llama.name,
            sites=[SITE],
            corpus=str(corpus_file),
            tokens=4000,
            out=str(root / "acts"),
            context=32,
            progress=False,
        ),
        tiny_llama,
    )
    train(
        TrainConfig(
            acts=str(store.path),
            out=str(root / "sae"),
            arch="topk",
            features="4x",
            k=4,
            batch_size=256,
            lr=4e-3,
            progress=False,
        )
    )
    return analyze(
        str(root / "sae"),
        store,
        model=tiny_llama,
        out=root / "features.db",
        window=16,
        batch_size=512,
        map_epochs=50,
        progress=False,
    )


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(os.environ.get("MONOSCOPE_SCREENSHOTS") or tempfile.mkdtemp(prefix="shots-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    sync_api = require_browser()
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# Runs before each document's own scripts (injected by the browser, not subject to the page's
# policy): collects the policy's violations, which Chromium also reports on the console.
WATCH_POLICY = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
"""


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(20_000)
    page.add_init_script(WATCH_POLICY)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("dialog", lambda dialog: (errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    # The error responses the tests cause on purpose: 413 for too long a text, 422 for a
    # target of two tokens.
    expected = ("the server responded with a status of 413", "status of 422")
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and not any(e in msg.text for e in expected)
            else None
        ),
    )
    yield page
    page.close()
    assert not errors, f"errors in the page: {errors}"


def a_searchable_token(store: FeatureStore) -> str:
    """A token that several features, but not all, fire on in their top examples."""
    sizes = {k: len(v) for k, v in store.catalog.token_index.items() if k.isalpha()}
    return max((n, k) for k, n in sizes.items() if n < store.n_features)[1]


def listed_ids(page) -> list[int]:
    return [
        int(i)
        for i in page.eval_on_selector_all("#feature-rows tr", "rs => rs.map(r => r.dataset.id)")
    ]


def test_live_server(db, page, shots, capsys):
    store = FeatureStore(db)
    app, _ = open_app(db)
    with background_server(app) as url:
        # The list.
        page.goto(url)
        page.wait_for_selector("#feature-rows tr.feature-row")
        assert listed_ids(page) == list(range(min(50, store.n_features)))
        page.screenshot(path=shots / "1-list.png", full_page=True)

        # Search by a token: the same features as the API gives.
        token = a_searchable_token(store)
        page.fill("#search", token)
        page.wait_for_function(
            "t => document.querySelector('#list-status').textContent.includes(t)", arg=token
        )
        expected = [item["id"] for item in store.catalog.search(token, limit=50)["items"]]
        assert listed_ids(page) == expected
        page.screenshot(path=shots / "2-search.png")

        # A feature page: highlighted tokens, the histogram, neighbours.
        fid = expected[0]
        page.click(f"#feature-rows tr[data-id='{fid}']")
        page.wait_for_selector("#top-examples .tok.on")
        assert page.url.endswith(f"#/feature/{fid}")
        assert f"/{fid}" in page.inner_text(".feature-title")
        colours = page.eval_on_selector_all(
            "#top-examples .tok.on", "ts => ts.map(t => getComputedStyle(t).backgroundColor)"
        )
        assert colours and all(
            c.startswith("rgba(255, 138, 0") or c == "rgb(255, 138, 0)" for c in colours
        )
        assert page.locator("#activation-histogram rect.bar").count() > 0
        assert page.locator("[data-panel=logits] .logit-row").count() > 0
        page.screenshot(path=shots / "3-feature.png", full_page=True)

        # Steer it: unsteered and steered continuations side by side, and the figures.
        page.click("#steer-jump")
        page.fill("#steer-prompt", "the model reads")
        page.fill("#steer-strength", "20")
        page.fill("#steer-tokens", "6")
        page.fill("#steer-temperature", "0")
        assert "20× its max activation" in page.inner_text("#steer-hint")
        page.click("#steer-run")
        page.wait_for_selector("#steer-results .steer-compare")
        columns = page.locator(".steer-column .steer-text")
        assert columns.count() == 2 and all(t.strip() for t in columns.all_inner_texts())
        assert "clamp 20× max" in page.inner_text(".steer-edit")
        assert page.locator("#steer-figures .stat").count() == 4
        assert page.locator("#steer-logits tbody tr").count() == 5
        page.locator("[data-panel=steer]").screenshot(path=shots / "3b-steer.png")
        page.select_option("#steer-mode", "ablate")
        assert page.is_disabled("#steer-strength") and "Sets the feature to 0" in page.inner_text(
            "#steer-hint"
        )

        # A neighbour is a link to its page.
        neighbour = page.locator("[data-panel=neighbours] a.feature-link").first
        target = neighbour.inner_text()
        neighbour.click()
        page.wait_for_url(f"**#/feature/{target}")
        page.wait_for_selector(f".feature-title:has-text('/{target}')")

        # The map, focused on this feature (zoomed about it): clicking the centre opens it.
        page.click("[data-panel=minimap] canvas")
        page.wait_for_url(f"**#/map?f={target}")
        canvas = page.locator("#map-canvas")
        box = canvas.bounding_box()
        page.wait_for_timeout(200)
        page.screenshot(path=shots / "4-map.png")
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_url(f"**#/feature/{target}")

        # What fires on my text.
        page.goto(url + "#/fires")
        text = "the model reads a token and writes features"
        page.fill("#fires-text", text)
        page.click("#fires-run")
        page.wait_for_selector("#fires-tokens .tok")
        assert page.locator("#fires-tokens .tok").count() == len(text.encode())  # byte tokens
        assert page.locator("#text-features tbody tr").count() > 0
        page.locator("#fires-tokens .tok").nth(4).click()
        page.wait_for_selector("#token-features tbody tr")
        page.screenshot(path=shots / "5-fires.png", full_page=True)
        page.locator("#token-features a.feature-link").first.click()
        page.wait_for_selector("#top-examples")

        # Too long a text: the server's message is shown.
        page.goto(url + "#/fires")
        page.fill("#fires-text", "a " * 300)
        page.click("#fires-run")
        page.wait_for_selector("#fires-status:has-text('the limit is 512')")

        # Attribution: a ranked table, and the prompt's tokens shaded by total attribution.
        page.click("#nav-attribute")
        prompt = "the model reads"
        page.fill("#attr-prompt", prompt)
        page.fill("#attr-target", "ab")
        page.click("#attr-run")
        page.wait_for_selector("#attr-status:has-text('not one')")  # two byte tokens
        page.fill("#attr-target", "e")
        page.fill("#attr-top", "8")
        page.click("#attr-run")
        page.wait_for_selector("#attr-rows tbody tr")
        assert page.locator("#attr-rows tbody tr").count() == 8
        assert page.locator("#attr-tokens .tok").count() == len(prompt) + 1  # BOS + bytes
        shaded = page.eval_on_selector_all(
            "#attr-tokens .tok", "ts => ts.filter(t => t.style.backgroundColor).length"
        )
        assert shaded > 0
        page.locator("#attr-rows tbody tr").first.click()
        page.wait_for_selector("#attr-position-features tbody tr")
        page.screenshot(path=shots / "5b-attribution.png", full_page=True)
        page.locator("#attr-rows a.feature-link").first.click()
        page.wait_for_selector("[data-panel=steer]")
    with capsys.disabled():
        print(f"\nbrowser screenshots: {shots}")


def test_static_site_from_file_url(db, page, shots, tmp_path, capsys):
    store = FeatureStore(db)
    site = export_site(db, tmp_path / "site", shard_size=32)
    index = (site / "index.html").as_uri()
    token = a_searchable_token(store)
    page.goto(f"{index}#/?q={token}")
    page.wait_for_selector("#feature-rows tr.feature-row")
    # The front end's search over the exported index finds what the server's search finds.
    for sort, order in [("id", "asc"), ("max_act", "desc"), ("density", "asc")]:
        page.goto(f"{index}#/?q={token}&sort={sort}&order={order}")
        page.wait_for_function(
            "s => document.querySelector('#sort').value === s", arg=f"{sort}:{order}"
        )
        page.wait_for_selector("#feature-rows tr.feature-row")
        result = store.catalog.search(token, sort=sort, order=order, limit=50)
        assert listed_ids(page) == [item["id"] for item in result["items"]]
    assert page.locator("#nav-fires").is_hidden()  # no model without the server
    assert page.locator("#nav-attribute").is_hidden()

    alive = [i for i in range(store.n_features) if store.catalog.top_tokens[i]]
    for fid in (alive[0], alive[-1]):  # the first and the last shard
        page.goto(f"{index}#/feature/{fid}")
        page.wait_for_selector("#top-examples .tok.on")
        assert f"/{fid}" in page.inner_text(".feature-title")
        assert page.locator("#activation-histogram rect.bar").count() > 0
        assert page.locator("[data-panel=steer]").count() == 0
    page.screenshot(path=shots / "6-static-feature.png", full_page=True)

    page.goto(f"{index}#/feature/{store.n_features + 5}")
    page.wait_for_selector(".error-card:has-text('no feature')")
    shutil.rmtree(site)
    with capsys.disabled():
        print(f"\nbrowser screenshots: {shots}")


XSS = '<img src=x onerror="window.__xss = 1">'


@pytest.fixture(scope="module")
def explained(db, tmp_path_factory) -> tuple[Path, list[int]]:
    """A copy of the store with three features explained (one of them by markup) and scored."""
    path = tmp_path_factory.mktemp("explained") / "features.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"VACUUM INTO '{path}'")
    store = FeatureStore(path)
    alive = [i for i in range(store.n_features) if store.catalog.top_tokens[i]][:3]
    texts = dict(zip(alive, [XSS, "dogs and puppies", "golden retrievers"], strict=True))
    scores = {
        alive[0]: {"detection": 0.8, "fuzzing": 0.65, "simulation": 0.42, "embedding": 0.7},
        alive[1]: {"detection": 0.55},
    }
    return write_interpretation(path, texts, scores), alive


def check_interpreted_feature(page, fid: int) -> None:
    """The feature page of the markup-explained feature: the text shown literally, its four
    scores with their chance levels, the judged examples (simulation's predictions too)."""
    page.wait_for_selector("#judged-examples .judged")
    assert page.inner_text("#explanation .explanation") == XSS
    assert page.locator("#view img").count() == 0 and page.evaluate("window.__xss") is None
    rows = page.locator("#explanations-panel .score-table tbody tr")
    assert rows.count() == 4
    assert page.eval_on_selector_all(
        "#explanations-panel .score-table tbody tr", "rs => rs.map(r => r.dataset.scorer)"
    ) == ["detection", "fuzzing", "simulation", "embedding"]
    assert [t.strip() for t in page.locator(".score-value").all_inner_texts()] == [
        "0.8",
        "0.65",
        "0.42",
        "0.7",
    ]
    assert "detection 0.8 · chance 0.5" in page.inner_text("#headline-score")
    detection = page.locator(".judged-score[data-scorer=detection] .judged")
    assert detection.count() > 4
    assert page.locator(".judged-score[data-scorer=detection] .verdict.right").count() > 0
    assert page.locator(".judged-score[data-scorer=detection] .tok.on").count() > 0
    assert "non-firing" in page.inner_text(".judged-score[data-scorer=detection]")
    page.click(".judged-score[data-scorer=simulation] summary")
    predicted = page.locator(".judged-score[data-scorer=simulation] .sim-row.predicted")
    assert predicted.count() > 0 and predicted.first.is_visible()
    page.wait_for_selector("#similar-explanations tr")
    assert page.locator("#similar-explanations a.feature-link").count() == 2


def test_live_explanations_scores_and_meaning(explained, page, shots):
    db, alive = explained
    store = FeatureStore(db)
    app, _ = open_app(db)
    with background_server(app) as url:
        page.goto(url + "#/?sort=score&order=desc")
        page.wait_for_selector("#feature-rows tr.feature-row")
        expected = store.catalog.search(sort="score", order="desc", limit=50)["items"]
        assert listed_ids(page)[:2] == alive[:2]  # the scored ones, best first
        assert listed_ids(page) == [item["id"] for item in expected]

        # Search by meaning: the rows the API ranks, nearest first.
        page.check("#by-meaning")
        page.fill("#search", "a dog")
        page.wait_for_selector("#list-status:has-text('nearest in meaning')")
        answer = page.request.post(url + "api/search-meaning", data={"query": "a dog"}).json()
        assert listed_ids(page) == [item["id"] for item in answer["items"]]
        assert set(listed_ids(page)[:2]) == {alive[1], alive[2]}
        assert page.locator("#feature-rows .similarity").count() == 3
        page.screenshot(path=shots / "7-meaning.png")

        page.goto(url + f"#/feature/{alive[0]}")
        check_interpreted_feature(page, alive[0])
        page.screenshot(path=shots / "8-explained.png", full_page=True)


def test_static_explanations_scores_and_similar(explained, page, shots, tmp_path):
    db, alive = explained
    store = FeatureStore(db)
    site = export_site(db, tmp_path / "site", shard_size=32)
    index = (site / "index.html").as_uri()
    page.goto(f"{index}#/?sort=score&order=asc")
    page.wait_for_selector("#feature-rows tr.feature-row")
    expected = store.catalog.search(sort="score", order="asc", limit=50)["items"]
    assert listed_ids(page) == [item["id"] for item in expected]
    assert page.is_disabled("#by-meaning") and page.is_visible("#meaning-note")
    page.fill("#search", "puppies")  # words of explanations work here
    page.wait_for_selector("#list-status:has-text('puppies')")
    assert listed_ids(page) == [alive[1]]

    page.goto(f"{index}#/feature/{alive[0]}")
    check_interpreted_feature(page, alive[0])
    page.screenshot(path=shots / "9-static-explained.png", full_page=True)
    shutil.rmtree(site)


PAYLOADS = (
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=1">',
    '<svg onload="window.__pwned=1">',
)


@pytest.fixture(scope="module")
def hostile(tiny_llama, tmp_path_factory) -> tuple[Path, list[int]]:
    """A store harvested from a corpus of markup, contexts of 160 tokens each holding every
    payload whole, windows as long as a context (so each example shows them whole), three
    features explained by the payloads. A random SAE: what fires does not matter here."""
    root = tmp_path_factory.mktemp("hostile")
    corpus = root / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i in range(40):
            f.write(json.dumps({"text": f"Doc {i}: " + " ".join(PAYLOADS) + " "}) + "\n")
    store = harvest_tiny(tiny_llama, corpus, root / "acts", SITE, tokens=2400, context=160)
    db = analyze(
        tiny_sae(tiny_llama, SITE),
        store,
        model=tiny_llama,
        out=root / "features.db",
        window=640,
        batch_size=512,
        map_epochs=20,
        progress=False,
    )
    catalog = FeatureStore(db).catalog
    alive = [i for i in range(catalog.n_features) if catalog.top_tokens[i]][:3]
    return write_interpretation(db, dict(zip(alive, PAYLOADS, strict=True))), alive


def check_shown_as_text(page, selector: str) -> None:
    """Every payload in the visible text of `selector`; none of it ran or became markup."""
    page.wait_for_function(
        "([s, ps]) => { const el = document.querySelector(s);"
        " return el && ps.every((p) => el.innerText.includes(p)); }",
        arg=[selector, list(PAYLOADS)],
    )
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("window.__violations") == []
    assert page.locator("img, [onerror], [onload]").count() == 0
    sources = page.eval_on_selector_all("script", "ss => ss.map(s => s.getAttribute('src'))")
    ours = ("config.js", "assets/", "data/")
    assert all(src and src.startswith(ours) for src in sources), sources


def check_policy_enforced(browser, url: str) -> None:
    """The control: markup put into the page by hand is refused by the browser, and reported."""
    control = browser.new_page()
    try:
        control.add_init_script(WATCH_POLICY)
        control.goto(url)
        control.wait_for_selector("#feature-rows tr.feature-row")
        control.evaluate(f"document.body.insertAdjacentHTML('beforeend', {PAYLOADS[1]!r})")
        control.wait_for_function("window.__violations.length > 0")
        assert control.evaluate("typeof window.__pwned") == "undefined"
    finally:
        control.close()


def check_hostile_pages(page, start: str, alive: list[int]) -> None:
    """The list, a search and the explained features' pages of the hostile store at `start`."""
    page.goto(start)
    page.wait_for_selector("#feature-rows tr.feature-row")
    check_shown_as_text(page, "#feature-rows")
    page.fill("#search", "pwned")
    page.wait_for_function(
        "() => document.querySelectorAll('#feature-rows tr.feature-row').length === 3"
    )
    assert sorted(listed_ids(page)) == alive
    check_shown_as_text(page, "#feature-rows")
    for fid, payload in zip(alive, PAYLOADS, strict=True):
        page.goto(f"{start}#/feature/{fid}")
        page.wait_for_selector("#top-examples .tok.on")
        assert page.inner_text("#explanation .explanation") == payload
        check_shown_as_text(page, "#top-examples .example")  # the corpus, in the first example


def test_markup_in_the_corpus_is_shown_as_text_live(hostile, browser, page, shots):
    db, alive = hostile
    app, _ = open_app(db)
    with background_server(app) as url:
        response = page.goto(url)
        assert response.headers["content-security-policy"] == CSP
        assert response.headers["x-frame-options"] == "DENY"
        check_hostile_pages(page, url, alive)
        page.screenshot(path=shots / "10-markup-live.png", full_page=True)
        check_policy_enforced(browser, url)


def test_markup_in_the_corpus_is_shown_as_text_in_the_export(
    hostile, browser, page, shots, tmp_path
):
    db, alive = hostile
    site = export_site(db, tmp_path / "site", shard_size=32, similar=0)
    index = (site / "index.html").as_uri()
    check_hostile_pages(page, index, alive)
    policy = page.locator("meta[http-equiv='Content-Security-Policy']")
    assert policy.get_attribute("content") == META_CSP
    page.screenshot(path=shots / "11-markup-static.png", full_page=True)
    check_policy_enforced(browser, index)
    shutil.rmtree(site)


def test_damaged_fields_named_and_the_rest_shown(explained, page, shots, tmp_path):
    """Bad JSON in some columns of one feature (issue 22, point 7): its page lists them above
    the panels, live and exported, and still shows its examples, logits and scores."""
    source, alive = explained
    db = tmp_path / "features.db"
    with sqlite3.connect(source) as conn:
        conn.execute(f"VACUUM INTO '{db}'")
    fid = alive[0]
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE features SET hist = '{', logit_top = '[' WHERE id = ?", (fid,))
        conn.execute(
            "UPDATE scores SET details = '[' WHERE feature = ? AND scorer = 'detection'", (fid,)
        )
        conn.execute(
            "UPDATE scores SET metrics = '{' WHERE feature = ? AND scorer = 'fuzzing'", (fid,)
        )
        conn.execute(
            "UPDATE examples SET tokens = '[1,' WHERE feature = ? AND kind = 'top' AND rank = 1",
            (fid,),
        )
    damaged = [
        f"features.hist of feature {fid}",
        f"features.logit_top of feature {fid}",
        f"scores.details of feature {fid} (detection score)",
        f"scores.metrics of feature {fid} (fuzzing score)",
        f"examples.tokens of feature {fid} (top example, bucket None, rank 1)",
    ]

    def check(start: str) -> None:
        page.goto(f"{start}#/feature/{fid}")
        page.wait_for_selector("#feature-errors li")
        assert page.inner_text("#feature-errors p") == "Damaged in the feature store:"
        lines = page.locator("#feature-errors li").all_inner_texts()
        assert len(lines) == len(damaged)
        for place in damaged:
            assert any(place in line for line in lines), (place, lines)
        assert page.locator(".panel-error").count() == 0
        assert page.locator("#top-examples .example").count() > 1
        assert page.locator("[data-panel=quantiles] .example").count() > 0
        assert page.locator("#activation-histogram").count() == 0
        assert page.locator("[data-panel=logits] .logit-neg").count() > 0
        assert "none" in page.inner_text("[data-panel=logits] .logit-columns > div:first-child")
        assert page.locator("#explanations-panel .score-table tbody tr").count() == 4
        n_judged = page.locator("#explanations-panel .score-table tbody td:last-child")
        assert "–" not in n_judged.all_inner_texts()  # fuzzing's n counted from its details
        scored = page.eval_on_selector_all(".judged-score", "ss => ss.map(s => s.dataset.scorer)")
        assert scored == ["fuzzing", "simulation", "embedding"]
        assert page.locator("[data-panel=neighbours] a.feature-link").count() > 0

    app, _ = open_app(db)
    with background_server(app) as url:
        check(url)
        page.screenshot(path=shots / "12-damaged.png", full_page=True)
    site = export_site(db, tmp_path / "site", shard_size=32, similar=0)
    check((site / "index.html").as_uri())
