// The feature page's interpretation panels: every explanation with its scores beside their
// chance levels, and the features whose explanations mean something similar (the live server
// embeds them on request; the static site stored them at export). Shapes: records.py.
"use strict";
(function (MS) {
  const keyOf = (x) => x.explainer + "\u0000" + x.prompt_version;

  // Score against chance on a 0..1 track, with chance marked.
  function scoreBar(s) {
    const clamp = (v) => Math.min(1, Math.max(0, v || 0));
    return MS.h("span.score-track", { title: s.metric + ": " + MS.fmt.num(s.score, 3) + ", chance " + MS.fmt.num(s.chance, 2) },
      MS.h("span.score-fill", { style: { width: (100 * clamp(s.score)).toFixed(1) + "%" } }),
      s.chance !== null ? MS.h("span.score-chance", { style: { left: (100 * clamp(s.chance)).toFixed(1) + "%" } }) : null);
  }

  function scoreTable(scores) {
    if (!scores.length) return MS.h("p.muted", {}, "Not scored yet (`monoscope score` scores it).");
    return MS.h("table.score-table", {},
      MS.h("thead", {}, MS.h("tr", {}, ["Scorer", "Metric", "Score", "Chance", "", "Judge", "n"].map((t, i) =>
        MS.h(i >= 2 && i <= 3 || i === 6 ? "th.num" : "th", {}, t)))),
      MS.h("tbody", {}, scores.map((s) => MS.h("tr", { dataset: { scorer: s.scorer } },
        MS.h("td", {}, s.scorer),
        MS.h("td.muted", {}, s.metric),
        MS.h("td.num.score-value", {}, s.status === "ok" ? MS.fmt.num(s.score, 3) : s.status),
        MS.h("td.num", {}, MS.fmt.num(s.chance, 2)),
        MS.h("td.bar-cell", {}, s.status === "ok" ? scoreBar(s) : null),
        MS.h("td.muted", {}, s.judge),
        // metrics or details is null when its column is damaged in the store.
        MS.h("td.num", {}, MS.fmt.int(s.metrics?.n ?? s.details?.length))))));
  }

  function explanationBlock(e, scores) {
    const ok = e.status === "ok";
    return MS.h("div.explanation-block", {},
      ok ? MS.h("div.explanation-text", {}, e.explanation)
        : MS.h("div.explanation-text.unparsable", {}, MS.h("span.badge", {}, "unparsable"), " the answer was: ",
          MS.h("span.raw", {}, e.raw)),
      MS.h("div.explanation-meta", {}, [e.explainer, e.prompt_version, e.created_at].filter(Boolean).join(" · ")),
      ok || scores.length ? scoreTable(scores) : null);
  }

  MS.registerFeaturePanel({
    id: "explanations", title: "Explanations and scores", column: "main", order: 5,
    render(f) {
      const explanations = f.explanations || [];
      const scores = f.scores || [];
      if (!explanations.length && !scores.length) return null;
      const byKey = new Map();
      for (const s of scores) {
        if (!byKey.has(keyOf(s))) byKey.set(keyOf(s), []);
        byKey.get(keyOf(s)).push(s);
      }
      const blocks = explanations.map((e) => {
        const mine = byKey.get(keyOf(e)) || [];
        byKey.delete(keyOf(e));
        return explanationBlock(e, mine);
      });
      // Scores of an explanation no longer in the store keep the text they scored.
      for (const rest of byKey.values()) {
        const s = rest[0];
        blocks.push(explanationBlock({ ...s, status: "ok", created_at: null }, rest));
      }
      return MS.h("div.explanations", { id: "explanations-panel" },
        MS.h("p.panel-note", {}, "Chance: what a judge without the explanation scores (balanced accuracy and AUROC 0.5, Pearson r 0)."),
        blocks);
    },
  });

  function similarList(items) {
    if (!items.length) return MS.h("p.muted", {}, "No other feature has an explanation.");
    return MS.h("table.similar", { id: "similar-explanations" }, MS.h("tbody", {}, items.map((s) => MS.h("tr", {},
      MS.h("td", {}, MS.featureLink(s.id, String(s.id))),
      MS.h("td.explanation-cell", {}, s.explanation),
      MS.h("td.num", { title: "cosine of the two explanations' embeddings" }, MS.fmt.num(s.similarity, 2))))));
  }

  MS.registerFeaturePanel({
    id: "similar", title: "Similar explanations", column: "side", order: 45,
    render(f) {
      if (!f.explanation) return null;
      const body = MS.h("div", {}, MS.h("p.muted", {}, "Embedding the explanations…"));
      MS.data.similar(f)
        .then((items) => body.replaceChildren(similarList(items)))
        .catch((err) => body.replaceChildren(MS.h("p.muted.similar-error", {}, err.message)));
      return body;
    },
  });
})(window.MS);
