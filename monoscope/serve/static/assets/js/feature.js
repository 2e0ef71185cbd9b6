// The feature page: a header, then panels in two columns. Each panel is registered with
// MS.registerFeaturePanel({id, title, column: "side" | "main", order, render(feature, ctx)}),
// where render returns an element (or null to skip) and ctx = {meta, data, live}. A later panel
// (steer.js: ctx.live tells whether the server's endpoints are there) is one more script
// calling MS.registerFeaturePanel, loaded after this one.
"use strict";
(function (MS) {
  const panels = [];
  MS.registerFeaturePanel = function (panel) {
    panels.push(panel);
    panels.sort((a, b) => a.order - b.order);
  };

  function header(f, meta) {
    const prev = f.id > 0 ? MS.h("a.btn", { href: "#/feature/" + (f.id - 1), title: "previous feature" }, "‹") : null;
    const next = f.id < meta.n_features - 1 ? MS.h("a.btn", { href: "#/feature/" + (f.id + 1), title: "next feature" }, "›") : null;
    return MS.h("section.feature-header", {},
      MS.h("div.feature-title-row", {},
        MS.h("h1.feature-title", {}, MS.h("span.muted", {}, "Feature "), MS.featureName(f.id)),
        MS.chips(f.top_tokens, "big"),
        MS.h("span.spacer"),
        prev, next,
        f.map ? MS.h("a.btn", { href: MS.hashFor("map", { f: f.id }) }, "Show on map") : null,
        MS.data.mode === "live" && MS.config.steer ? MS.h("button", {
          type: "button", id: "steer-jump", title: "Go to the steering panel",
          onclick: () => document.querySelector("[data-panel=steer]").scrollIntoView({ behavior: "smooth" }),
        }, "Steer ↓") : null),
      MS.h("div.explanation-slot", { id: "explanation" },
        f.explanation
          ? [MS.h("span.explanation", {}, f.explanation), headlineScore(f)]
          : MS.h("span.muted", {}, "No explanation yet (`monoscope explain` writes one).")));
  }

  // features.score with the scorer it comes from and that scorer's chance level.
  function headlineScore(f) {
    if (f.score === null || f.score === undefined) return null;
    const s = (f.scores || []).find((x) => x.status === "ok" && x.score === f.score && x.explanation === f.explanation);
    const text = s ? s.scorer + " " + MS.fmt.num(f.score, 3) + " · chance " + MS.fmt.num(s.chance, 2)
      : "score " + MS.fmt.num(f.score, 3);
    return MS.h("span.score", { id: "headline-score", title: s ? s.metric + " of the " + s.scorer + " scorer" : "explanation score" }, text);
  }

  // The store's damaged fields of this feature (records.py: `errors`), one line each.
  function damaged(errors) {
    if (!errors.length) return null;
    return MS.h("section.feature-errors", { id: "feature-errors", role: "alert" },
      MS.h("p", {}, "Damaged in the feature store:"),
      MS.h("ul", {}, errors.map((line) => MS.h("li", {}, line))));
  }

  // One panel's element; a panel that throws (a field it did not expect) costs only itself.
  function rendered(panel, feature, ctx) {
    try {
      return panel.render(feature, ctx);
    } catch (err) {
      console.error("panel " + panel.id + ":", err);
      return MS.h("p.muted.panel-error", {}, "This panel cannot be shown: " + err.message);
    }
  }

  async function mount(root, args) {
    const [meta, feature] = await Promise.all([MS.data.meta(), MS.data.feature(args[0])]);
    document.title = "Feature " + MS.featureName(feature.id) + " · monoscope";
    const ctx = { meta, data: MS.data, live: MS.data.mode === "live" };
    const columns = { side: MS.h("div.feature-side"), main: MS.h("div.feature-main") };
    for (const panel of panels) {
      const body = rendered(panel, feature, ctx);
      if (body) columns[panel.column].append(MS.card(panel.title, body, { dataset: { panel: panel.id } }));
    }
    MS.append(root, [header(feature, meta), damaged(feature.errors || []),
      MS.h("div.feature-grid", {}, columns.side, columns.main)]);
  }

  // --- the built-in panels -----------------------------------------------------------------

  MS.registerFeaturePanel({
    id: "stats", title: "Activation statistics", column: "side", order: 10,
    render(f, { meta }) {
      const stat = (k, v, sub) => MS.h("div.stat", {}, MS.h("div.stat-key", {}, k), MS.h("div.stat-value", {}, v), sub ? MS.h("div.stat-sub", {}, sub) : null);
      const dh = meta.density_hist;
      return MS.h("div", {},
        MS.h("div.stats", {},
          stat("Density", MS.fmt.percent(f.density), MS.fmt.oneIn(f.density)),
          stat("Fired on", MS.fmt.int(f.n_fired), "tokens"),
          stat("Max act", MS.fmt.num(f.max_act, 4)),
          stat("Mean act", MS.fmt.num(f.mean_act, 4), "when firing")),
        dh && dh.edges && f.density > 0 ? MS.h("div.chart-block", {},
          MS.h("div.chart-caption", {}, "This feature's density among all features"),
          MS.charts.histogram({
            edges: dh.edges, counts: dh.counts, xFormat: (v) => "1e" + Math.round(v),
            markers: [{ x: Math.log10(f.density), label: "this" }],
          })) : null);
    },
  });

  MS.registerFeaturePanel({
    id: "histogram", title: "Activation distribution (non-zero)", column: "side", order: 20,
    render(f, { meta }) {
      if (!f.hist) return null;  // damaged in the store: named above the panels
      const edges = meta.hist_edges || [];
      const total = f.hist.reduce((a, b) => a + b, 0);
      return MS.h("div.chart-block", { id: "activation-histogram" },
        MS.charts.histogram({
          edges, counts: f.hist, log: true, xFormat: (v) => MS.fmt.num(v, 2),
          markers: [{ x: f.mean_act, label: "mean", cls: "mean" }],
          barTitle: (i) => MS.fmt.num(edges[i], 3) + " – " + MS.fmt.num(edges[i + 1], 3) + ": " + MS.fmt.int(f.hist[i]) + " tokens",
        }),
        MS.h("div.chart-caption", {}, MS.fmt.int(total) + " firing tokens, log-spaced bins of activation"));
    },
  });

  MS.registerFeaturePanel({
    id: "logits", title: "Direct logit effects", column: "side", order: 30,
    render(f) {
      // Either list is null when its column is damaged in the store.
      const top = f.logit_top || [];
      const bottom = f.logit_bottom || [];
      const all = [...top, ...bottom].map((e) => Math.abs(e[2]));
      if (!all.length) return null;
      const scale = Math.max(...all);
      return MS.h("div", {},
        MS.h("p.panel-note", {}, "Decoder direction through the final norm and unembedding; ignores later layers."),
        MS.h("div.logit-columns", {},
          MS.h("div", {}, MS.h("h3", {}, "Promotes"), MS.charts.logitList(top, scale, "pos")),
          MS.h("div", {}, MS.h("h3", {}, "Suppresses"), MS.charts.logitList(bottom, scale, "neg"))));
    },
  });

  MS.registerFeaturePanel({
    id: "neighbours", title: "Nearest neighbours (decoder cosine)", column: "side", order: 40,
    render(f) {
      if (!f.neighbours.length) return null;
      const coocc = f.neighbours.some((n) => n.cooccurrence !== null);
      return MS.h("table.neighbours", {},
        MS.h("thead", {}, MS.h("tr", {}, MS.h("th", {}, "Feature"), MS.h("th", {}, "Top tokens"),
          MS.h("th.num", {}, "cos"), coocc ? MS.h("th.num", { title: "P(neighbour fires | this feature fires)" }, "co-fire") : null)),
        MS.h("tbody", {}, f.neighbours.map((n) => MS.h("tr", { title: n.explanation || "" },
          MS.h("td", {}, MS.featureLink(n.id, String(n.id))),
          MS.h("td", {}, MS.chips(n.top_tokens.slice(0, 2))),
          MS.h("td.num", {}, MS.fmt.num(n.cosine, 2)),
          coocc ? MS.h("td.num", {}, n.cooccurrence === null ? "–" : MS.fmt.percent(n.cooccurrence)) : null))));
    },
  });

  MS.registerFeaturePanel({
    id: "minimap", title: "Feature map", column: "side", order: 50,
    render(f) {
      if (!f.map) return null;
      const canvas = MS.h("canvas.minimap", { title: "Open the map here" });
      MS.data.map().then((data) => {
        MS.mapPlot(canvas, data, {
          muted: true, highlight: f.id, neighbours: f.neighbours.map((n) => n.id), radius: 1.6,
          onClick: () => { location.hash = MS.hashFor("map", { f: f.id }); },
        });
      }).catch((err) => canvas.replaceWith(MS.h("p.muted", {}, err.message)));
      return MS.h("div", {}, canvas, MS.h("div.chart-caption", {}, "orange: this feature · blue: its neighbours"));
    },
  });

  MS.registerFeaturePanel({
    id: "top-examples", title: "Top activations", column: "main", order: 10,
    render(f) {
      const top = f.examples.top;
      if (!top.length) return MS.h("p.muted", {}, "This feature never fired on the analysed tokens.");
      return MS.h("div.examples", { id: "top-examples" }, top.map((ex) => MS.tokens.example(ex, f.max_act)));
    },
  });

  MS.registerFeaturePanel({
    id: "quantiles", title: "Samples across activation intervals", column: "main", order: 20,
    render(f, { meta }) {
      const groups = new Map();
      for (const ex of f.examples.quantile) {
        if (!groups.has(ex.bucket)) groups.set(ex.bucket, []);
        groups.get(ex.bucket).push(ex);
      }
      if (!groups.size) return null;
      const n = (meta.params && meta.params.n_quantiles) || null;
      const buckets = [...groups.keys()].sort((a, b) => b - a);
      return MS.h("div.quantiles", {}, buckets.map((b) => {
        const exs = groups.get(b);
        const acts = exs.map((e) => e.activation);
        return MS.h("div.quantile-group", {},
          MS.h("h3", {}, "Interval " + (b + 1) + (n ? " of " + n : ""),
            MS.h("span.muted", {}, " · activations " + MS.fmt.num(Math.min(...acts), 3) + " – " + MS.fmt.num(Math.max(...acts), 3))),
          MS.h("div.examples", {}, exs.map((ex) => MS.tokens.example(ex, f.max_act))));
      }));
    },
  });

  MS.views.feature = { mount };
})(window.MS);
