// The feature page's judged examples: for each score, the held-out windows its judge graded,
// the judge's answer beside the truth, each window's tokens shaded by the feature's activation
// (and, for simulation, by the judge's predicted activation below it). Shapes: records.py.
"use strict";
(function (MS) {
  const QUESTIONS = {
    detection: "Does the explanation fit the window? Truth: the feature fires in it.",
    fuzzing: "Do the marked (outlined) tokens fit the explanation? Truth: they are the ones the feature fires on.",
    simulation: "The judge predicts each token's activation (0–10) from the explanation: blue below the true orange.",
    embedding: "The window's embedding against the explanation's (the answer is their cosine). Truth: the feature fires in it.",
  };

  const exampleKey = (kind, bucket, rank) => kind + "|" + (bucket ?? "") + "|" + rank;

  function windowsOf(f) {
    const found = new Map();
    for (const kind of Object.keys(f.examples)) {
      for (const ex of f.examples[kind]) found.set(exampleKey(ex.kind, ex.bucket, ex.rank), ex);
    }
    return found;
  }

  // detection and fuzzing answer 0/1 (or true/false); embedding a cosine; simulation a value
  // per token (shown as its own row of tokens).
  const binary = (v) => v === true || v === false || v === 0 || v === 1;
  const graded = (d) => binary(d.truth) && binary(d.answer);
  const isRight = (d) => Boolean(d.truth) === Boolean(d.answer);

  function shown(value, yesNo) {
    if (value === null || value === undefined) return "no answer";
    if (yesNo && binary(value)) return value ? "yes" : "no";
    if (typeof value === "number") return MS.fmt.num(value, 3);
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function verdict(d) {
    // Per-token answers are the token rows themselves.
    if (Array.isArray(d.truth)) return MS.h("div.verdict", {}, d.answer === null ? MS.h("span.muted", {}, "no answer") : null);
    const yesNo = graded(d);
    const right = yesNo && isRight(d);
    return MS.h("div.verdict" + (yesNo ? (right ? ".right" : ".wrong") : ""), {},
      MS.h("div.verdict-line", {}, MS.h("span.verdict-key", {}, "truth"), MS.h("span.verdict-truth", {}, shown(d.truth, binary(d.answer)))),
      MS.h("div.verdict-line", {}, MS.h("span.verdict-key", {}, "judge"), MS.h("span.verdict-answer", {}, shown(d.answer, binary(d.truth)))),
      yesNo ? MS.h("div.verdict-mark", { title: right ? "the judge was right" : "the judge was wrong" }, right ? "✓" : "✗") : null);
  }

  function where(d) {
    if (d.kind === "random") return "non-firing";
    if (d.kind === "quantile") return "interval " + (d.bucket + 1);
    return d.kind + " #" + (d.rank + 1);
  }

  function judgedRow(d, ex, f) {
    const label = MS.h("div.judged-where", {}, where(d));
    if (!ex) return MS.h("div.judged", {}, verdict(d), label, MS.h("span.muted", {}, "(window not in this store)"));
    const marked = Array.isArray(d.marked) ? d.marked : [];
    const rows = [MS.tokens.sequence(ex.tokens, ex.acts, { max: f.max_act, centre: ex.centre, marked })];
    if (Array.isArray(d.answer) && d.answer.length === ex.tokens.length) {
      rows[0] = MS.h("div.sim-row", {}, MS.h("span.sim-key", {}, "true"), rows[0]);
      rows.push(MS.h("div.sim-row.predicted", {}, MS.h("span.sim-key", {}, "predicted"),
        MS.tokens.sequence(ex.tokens, d.answer, {
          max: 10, predicted: true, label: "predicted",
          titles: ex.acts.map((a) => "true activation " + MS.fmt.num(a, 4)),
        })));
    }
    return MS.h("div.judged", { dataset: { kind: d.kind } }, verdict(d), label, MS.h("div.judged-window", {}, rows));
  }

  function scoreDetails(s, windows, f, open) {
    const yesNo = s.details.filter(graded);
    const right = yesNo.filter(isRight).length;
    const summary = s.scorer + " · " + s.judge + " · " + s.metric + " " + MS.fmt.num(s.score, 3) +
      " (chance " + MS.fmt.num(s.chance, 2) + ") · " + s.details.length + " examples" +
      (yesNo.length ? ", " + right + " of " + yesNo.length + " judged right" : "");
    return MS.h("details.judged-score", { open, dataset: { scorer: s.scorer } },
      MS.h("summary", {}, summary),
      MS.h("p.panel-note", {}, "Explanation scored: ", MS.h("q.scored-text", {}, s.explanation), " · ",
        QUESTIONS[s.scorer] || ""),
      MS.h("div.judged-list", {}, s.details.map((d) => judgedRow(d, windows.get(exampleKey(d.kind, d.bucket, d.rank)), f))));
  }

  MS.registerFeaturePanel({
    id: "judged", title: "Held-out examples, as the judges graded them", column: "main", order: 15,
    render(f) {
      // details is null when its column is damaged in the store.
      const scores = (f.scores || []).filter((s) => s.details && s.details.length);
      if (!scores.length) return null;
      const windows = windowsOf(f);
      return MS.h("div.judged-panel", { id: "judged-examples" },
        scores.map((s, i) => scoreDetails(s, windows, f, i === 0)));
    },
  });
})(window.MS);
