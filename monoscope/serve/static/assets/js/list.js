// The feature list: search (by tokens and explanation words, or by meaning on the live server),
// sort, pages; with the store's overview on top.
"use strict";
(function (MS) {
  const PAGE = 50;
  const SORTS = [
    ["id:asc", "Feature id"],
    ["max_act:desc", "Max activation ↓"],
    ["max_act:asc", "Max activation ↑"],
    ["density:desc", "Density ↓"],
    ["density:asc", "Density ↑"],
    ["score:desc", "Score ↓"],
    ["score:asc", "Score ↑"],
  ];
  const COLUMNS = 6;

  let els = null;
  let request = 0;

  function readParams(params) {
    return {
      query: params.get("q") || "",
      sort: params.get("sort") || "id",
      order: params.get("order") || "asc",
      page: Math.max(1, parseInt(params.get("page") || "1", 10) || 1),
      meaning: params.get("by") === "meaning",
    };
  }

  function setHash(state, replace) {
    const hash = MS.hashFor("", {
      q: state.query,
      sort: state.sort === "id" ? "" : state.sort,
      order: state.order === "asc" ? "" : state.order,
      page: state.page > 1 ? state.page : "",
      by: state.meaning ? "meaning" : "",
    });
    if (replace) {
      history.replaceState(null, "", hash);
      MS.route();
    } else {
      location.hash = hash;
    }
  }

  function overview(meta) {
    const sae = meta.sae || {};
    const acts = meta.acts || {};
    const dh = meta.density_hist;
    const facts = [
      ["Features", MS.fmt.int(meta.n_features)],
      ["Model", (meta.model && meta.model.name) || sae.model || "–"],
      ["Site", sae.site || acts.site || "–"],
      ["SAE", (sae.arch || "?") + (sae.d_in ? " · d_in " + sae.d_in : "")],
      ["Tokens analysed", MS.fmt.tokensCount(meta.tokens_seen)],
    ];
    return MS.h("section.card.overview", {},
      MS.h("div.overview-facts", {}, facts.map(([k, v]) => MS.h("div.fact", {}, MS.h("span.fact-key", {}, k), MS.h("span.fact-value", {}, v)))),
      dh && dh.edges ? MS.h("div.overview-chart", {},
        MS.h("div.chart-caption", {}, "Feature density (fraction of tokens, log scale)" +
          (dh.dead ? " · " + MS.fmt.int(dh.dead) + " features never fired" : "")),
        MS.charts.histogram({ edges: dh.edges, counts: dh.counts, xFormat: (v) => "1e" + Math.round(v) })) : null);
  }

  function densityCell(d) {
    // Bar on a log scale from 1e-7 to 1.
    const t = d > 0 ? Math.min(1, Math.max(0.02, (Math.log10(d) + 7) / 7)) : 0;
    return MS.h("td.num.density-cell", {},
      MS.h("span.density-bar", {}, MS.h("span.density-fill", { style: { width: (100 * t).toFixed(1) + "%" } })),
      MS.h("span.density-value", { title: MS.fmt.oneIn(d) }, MS.fmt.percent(d)));
  }

  function row(item) {
    const go = () => { location.hash = "#/feature/" + item.id; };
    const similarity = item.similarity !== undefined
      ? MS.h("span.similarity", { title: "cosine of the query's and the explanation's embeddings" }, "≈ " + MS.fmt.num(item.similarity, 2))
      : null;
    return MS.h("tr.feature-row", { onclick: go, dataset: { id: item.id } },
      MS.h("td.id-cell", {}, MS.featureLink(item.id, String(item.id), { onclick: (e) => e.stopPropagation() })),
      MS.h("td", {}, MS.chips(item.top_tokens)),
      MS.h("td.explanation-cell", {}, item.explanation ? item.explanation : MS.h("span.muted", {}, "—"), similarity),
      MS.h("td.num.score-cell", {}, MS.fmt.num(item.score, 3)),
      densityCell(item.density),
      MS.h("td.num", {}, MS.fmt.num(item.max_act, 3)));
  }

  // "by meaning": on the live server when the store has explanations; the static site says why not.
  function meaningToggle(meta) {
    const box = MS.h("input", { type: "checkbox", id: "by-meaning" });
    const why = MS.data.mode !== "live" ? MS.MEANING_NEEDS_SERVER
      : !meta.has_explanations ? "No feature has an explanation yet: run `monoscope explain` first." : null;
    box.disabled = Boolean(why);
    return MS.h("label.meaning-toggle", { title: why || "Rank the explained features by how close their explanation's meaning is to the query" },
      box, "by meaning");
  }

  function pager(state, total) {
    const pages = Math.max(1, Math.ceil(total / PAGE));
    const to = (page) => () => setHash({ ...state, page }, false);
    return MS.h("div.pager", {},
      MS.h("button", { type: "button", disabled: state.page <= 1, onclick: to(state.page - 1) }, "‹ Previous"),
      MS.h("span.pager-info", {}, "Page " + Math.min(state.page, pages) + " of " + MS.fmt.int(pages)),
      MS.h("button", { type: "button", disabled: state.page >= pages, onclick: to(state.page + 1) }, "Next ›"));
  }

  async function mount(root, args, params) {
    const meta = await MS.data.meta();
    let typing = null;
    const input = MS.h("input.search-input", {
      type: "search", id: "search", placeholder: "Search: a token (e.g. “ bridge”), words of an explanation, or #id",
      "aria-label": "Search features",
      maxlength: MS.config.search ? MS.config.search.max_query_chars : null,
    });
    const select = MS.h("select.sort-select", { id: "sort", "aria-label": "Sort" },
      SORTS.map(([value, label]) => MS.h("option", { value }, label)));
    const toggle = meaningToggle(meta);
    const meaning = toggle.querySelector("input");
    const state = () => {
      const [sort, order] = select.value.split(":");
      return { query: input.value, sort, order, page: 1, meaning: meaning.checked };
    };
    meaning.addEventListener("change", () => setHash(state(), false));
    input.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => setHash(state(), true), 200);
    });
    select.addEventListener("change", () => setHash(state(), false));
    const form = MS.h("form.search-bar", { onsubmit: (e) => { e.preventDefault(); clearTimeout(typing); setHash(state(), false); } },
      input, toggle, select);
    els = {
      input, select, meaning,
      status: MS.h("div.list-status", { id: "list-status" }),
      body: MS.h("tbody", { id: "feature-rows" }),
      pager: MS.h("div"),
    };
    const table = MS.h("table.feature-table", {},
      MS.h("thead", {}, MS.h("tr", {},
        MS.h("th", {}, "Feature"), MS.h("th", {}, "Top tokens"), MS.h("th", {}, "Explanation"),
        MS.h("th.num", { title: "The explanation's headline score: detection's balanced accuracy when scored, else fuzzing, simulation, embedding" }, "Score"),
        MS.h("th.num", {}, "Density"), MS.h("th.num", {}, "Max act"))),
      els.body);
    const note = MS.data.mode !== "live" && meta.has_explanations
      ? MS.h("p.panel-note", { id: "meaning-note" }, MS.MEANING_NEEDS_SERVER) : null;
    root.append(overview(meta), MS.h("section.card.list-card", {}, form, note, els.status, table, els.pager));
    await update(args, params);
  }

  async function update(args, params) {
    const state = readParams(params);
    if (document.activeElement !== els.input) els.input.value = state.query;
    els.meaning.checked = state.meaning;
    const byMeaning = state.meaning && state.query.trim() !== "";
    els.select.value = state.sort + ":" + state.order;
    if (!els.select.value) els.select.value = "id:asc";
    els.select.disabled = byMeaning;  // ranked by similarity instead
    const mine = ++request;
    els.status.textContent = byMeaning ? "Searching by meaning (the first search loads the embedding model and embeds every explanation)…" : "Searching…";
    const q = { query: state.query, sort: state.sort, order: state.order, offset: (state.page - 1) * PAGE, limit: PAGE };
    let result;
    try {
      result = await (byMeaning ? MS.data.searchMeaning(q) : MS.data.list(q));
    } catch (err) {
      if (mine === request) { els.status.textContent = err.message; els.body.replaceChildren(); els.pager.replaceChildren(); }
      return;
    }
    if (mine !== request) return;
    els.status.textContent = describe(state, result, byMeaning);
    els.body.replaceChildren(...result.items.map(row));
    if (!result.items.length) {
      els.body.append(MS.h("tr", {}, MS.h("td.empty", { colspan: COLUMNS }, byMeaning
        ? "No feature has an explanation to compare with."
        : "No feature matches. Search matches whole tokens the feature fires on in its top examples, and words of explanations.")));
    }
    els.pager.replaceChildren(pager(state, result.total));
  }

  function describe(state, result, byMeaning) {
    const query = "“" + state.query.trim() + "”";
    const count = MS.fmt.int(result.total) + (byMeaning ? " explained" : "") + " feature" + (result.total === 1 ? "" : "s");
    if (byMeaning) return count + ", nearest in meaning to " + query + " first" + (result.model ? " (" + result.model + ")" : "");
    return count + (state.query.trim() ? " matching " + query : "");
  }

  MS.views.list = { mount, update };
})(window.MS);
