// The feature list: search, sort, pages; with the store's overview on top.
"use strict";
(function (MS) {
  const PAGE = 50;
  const SORTS = [
    ["id:asc", "Feature id"],
    ["max_act:desc", "Max activation ↓"],
    ["max_act:asc", "Max activation ↑"],
    ["density:desc", "Density ↓"],
    ["density:asc", "Density ↑"],
  ];

  let els = null;
  let request = 0;

  function readParams(params) {
    return {
      query: params.get("q") || "",
      sort: params.get("sort") || "id",
      order: params.get("order") || "asc",
      page: Math.max(1, parseInt(params.get("page") || "1", 10) || 1),
    };
  }

  function setHash(state, replace) {
    const hash = MS.hashFor("", {
      q: state.query,
      sort: state.sort === "id" ? "" : state.sort,
      order: state.order === "asc" ? "" : state.order,
      page: state.page > 1 ? state.page : "",
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
    return MS.h("tr.feature-row", { onclick: go, dataset: { id: item.id } },
      MS.h("td.id-cell", {}, MS.featureLink(item.id, String(item.id), { onclick: (e) => e.stopPropagation() })),
      MS.h("td", {}, MS.chips(item.top_tokens)),
      MS.h("td.explanation-cell", {}, item.explanation ? item.explanation : MS.h("span.muted", {}, "—")),
      densityCell(item.density),
      MS.h("td.num", {}, MS.fmt.num(item.max_act, 3)));
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
    });
    const select = MS.h("select.sort-select", { id: "sort", "aria-label": "Sort" },
      SORTS.map(([value, label]) => MS.h("option", { value }, label)));
    const state = () => {
      const [sort, order] = select.value.split(":");
      return { query: input.value, sort, order, page: 1 };
    };
    input.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => setHash(state(), true), 200);
    });
    select.addEventListener("change", () => setHash(state(), false));
    const form = MS.h("form.search-bar", { onsubmit: (e) => { e.preventDefault(); clearTimeout(typing); setHash(state(), false); } },
      input, select);
    els = {
      input, select,
      status: MS.h("div.list-status", { id: "list-status" }),
      body: MS.h("tbody", { id: "feature-rows" }),
      pager: MS.h("div"),
    };
    const table = MS.h("table.feature-table", {},
      MS.h("thead", {}, MS.h("tr", {},
        MS.h("th", {}, "Feature"), MS.h("th", {}, "Top tokens"), MS.h("th", {}, "Explanation"),
        MS.h("th.num", {}, "Density"), MS.h("th.num", {}, "Max act"))),
      els.body);
    root.append(overview(meta), MS.h("section.card.list-card", {}, form, els.status, table, els.pager));
    await update(args, params);
  }

  async function update(args, params) {
    const state = readParams(params);
    if (document.activeElement !== els.input) els.input.value = state.query;
    els.select.value = state.sort + ":" + state.order;
    if (!els.select.value) els.select.value = "id:asc";
    const mine = ++request;
    els.status.textContent = "Searching…";
    let result;
    try {
      result = await MS.data.list({
        query: state.query, sort: state.sort, order: state.order, offset: (state.page - 1) * PAGE, limit: PAGE,
      });
    } catch (err) {
      if (mine === request) { els.status.textContent = err.message; els.body.replaceChildren(); }
      return;
    }
    if (mine !== request) return;
    const what = state.query.trim() ? " matching “" + state.query.trim() + "”" : "";
    els.status.textContent = MS.fmt.int(result.total) + " feature" + (result.total === 1 ? "" : "s") + what;
    els.body.replaceChildren(...result.items.map(row));
    if (!result.items.length) {
      els.body.append(MS.h("tr", {}, MS.h("td.empty", { colspan: 5 }, "No feature matches. Search matches whole tokens the feature fires on in its top examples.")));
    }
    els.pager.replaceChildren(pager(state, result.total));
  }

  MS.views.list = { mount, update };
})(window.MS);
