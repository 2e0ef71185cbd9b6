// "What fires on my text" (live server only): run the model and the SAE on pasted text and show
// the most active features of each token.
"use strict";
(function (MS) {
  const state = { text: "", result: null, token: null, feature: null };

  function mount(root) {
    if (MS.data.mode !== "live") {
      root.append(MS.card("What fires on my text", MS.h("p", {},
        "This needs the model, so it runs on the live server only: ",
        MS.h("code", {}, "monoscope serve features.db"), ".")));
      return;
    }
    const limit = (MS.config.fires && MS.config.fires.max_tokens) || 512;
    const textarea = MS.h("textarea.fires-text", {
      id: "fires-text", rows: 4, placeholder: "Paste or type some text, then Run.",
    });
    textarea.value = state.text;
    const status = MS.h("div.fires-status", { id: "fires-status", role: "status" });
    const button = MS.h("button.primary", { type: "submit", id: "fires-run" }, "Run");
    const results = MS.h("div.fires-results", { id: "fires-results" });
    const form = MS.h("form.fires-form", {
      async onsubmit(e) {
        e.preventDefault();
        state.text = textarea.value;
        if (!state.text.trim()) { status.textContent = "Type some text first."; return; }
        button.disabled = true;
        status.textContent = "Running the model and the SAE… (the first run loads them)";
        try {
          state.result = await MS.data.fires(state.text);
          state.token = null;
          state.feature = mostActive(state.result);
          status.textContent = MS.fmt.int(state.result.n_tokens) + " tokens. Click a token for its features, or a feature to highlight where it fires.";
          status.classList.remove("error");
          render(results);
        } catch (err) {
          status.textContent = err.message;
          status.classList.add("error");
          setTimeout(() => status.classList.remove("error"), 4000);
        } finally {
          button.disabled = false;
        }
      },
    }, textarea, MS.h("div.fires-actions", {}, button,
      MS.h("span.muted", {}, "Up to " + limit + " tokens. The model and the SAE run on the server.")), status);
    root.append(MS.card("What fires on my text", form), results);
    if (state.result) render(results);
  }

  // Per token, the activation of `feature` (0 where it is not among the token's top features).
  function activations(result, feature) {
    return result.tokens.map((t) => {
      const hit = t.features.find(([id]) => id === feature);
      return hit ? hit[1] : 0;
    });
  }

  // The feature with the largest activation anywhere in the text (null if none fired).
  function mostActive(result) {
    let best = null, bestAct = 0;
    for (const t of result.tokens) {
      for (const [id, a] of t.features) if (a > bestAct) { best = id; bestAct = a; }
    }
    return best;
  }

  function summary(result, id) {
    return result.features[String(id)] || { id, top_tokens: [], max_act: 0, explanation: null };
  }

  function render(results) {
    const r = state.result;
    let acts, max;
    if (state.feature !== null) {
      // Scaled to its largest value in this text: a feature far below its store max still shows.
      acts = activations(r, state.feature);
      max = Math.max(...acts, 0);
    } else {
      // Each token's strongest feature, as a fraction of that feature's max in the store.
      acts = r.tokens.map((t) => Math.max(0, ...t.features.map(([id, a]) => a / (summary(r, id).max_act || a))));
      max = 1;
    }
    const seq = MS.tokens.sequence(r.tokens.map((t) => t.text), acts, {
      max, centre: state.token === null ? -1 : state.token,
      onSelect: (i) => { state.token = i; render(results); },
    });
    const caption = state.feature !== null
      ? ["Where feature ", MS.featureLink(state.feature), " fires (white to orange: zero to its largest activation in this text). ",
         MS.h("button.link", { type: "button", onclick: () => { state.feature = null; render(results); } }, "Show every token's strongest feature")]
      : "Colour: each token's strongest feature, relative to that feature's max activation in the store.";
    results.replaceChildren(
      MS.h("div.fires-grid", {},
        MS.card("Tokens", MS.h("div", {}, MS.h("div.chart-caption", {}, caption), MS.h("div.fires-tokens", { id: "fires-tokens" }, seq))),
        MS.card(state.token === null ? "Token" : ["Token ", MS.chips([r.tokens[state.token].text])], tokenPanel(r, results))),
      MS.card("Most active features in this text", topFeatures(r, results)));
  }

  function featureRow(r, id, act, extra, results) {
    const s = summary(r, id);
    return MS.h("tr" + (state.feature === id ? ".selected" : ""), {
      onclick: () => { state.feature = id; render(results); }, title: "highlight where it fires",
    },
      MS.h("td", {}, MS.featureLink(id, String(id), { onclick: (e) => e.stopPropagation() })),
      MS.h("td.num", {}, MS.fmt.num(act, 3)),
      MS.h("td.num.muted", {}, s.max_act ? Math.round((100 * act) / s.max_act) + "%" : "–"),
      extra,
      MS.h("td", {}, MS.chips(s.top_tokens.slice(0, 3))),
      MS.h("td.explanation-cell", {}, s.explanation || ""));
  }

  function tokenPanel(r, results) {
    if (state.token === null) return MS.h("p.muted", {}, "Click a token to list its most active features.");
    const feats = r.tokens[state.token].features;
    if (!feats.length) return MS.h("p.muted", {}, "No feature fires on this token.");
    return MS.h("table.fires-table", { id: "token-features" },
      MS.h("thead", {}, MS.h("tr", {}, MS.h("th", {}, "Feature"), MS.h("th.num", {}, "act"), MS.h("th.num", {}, "of max"), MS.h("th", {}, "Top tokens"), MS.h("th", {}, ""))),
      MS.h("tbody", {}, feats.map(([id, a]) => featureRow(r, id, a, null, results))));
  }

  function topFeatures(r, results) {
    const best = new Map();
    r.tokens.forEach((t) => t.features.forEach(([id, a]) => {
      const b = best.get(id) || { act: 0, count: 0 };
      best.set(id, { act: Math.max(b.act, a), count: b.count + 1 });
    }));
    const rows = [...best.entries()].sort((a, b) => b[1].act - a[1].act || a[0] - b[0]).slice(0, 30);
    if (!rows.length) return MS.h("p.muted", {}, "No feature fired.");
    return MS.h("table.fires-table", { id: "text-features" },
      MS.h("thead", {}, MS.h("tr", {}, MS.h("th", {}, "Feature"), MS.h("th.num", {}, "max act"), MS.h("th.num", {}, "of max"),
        MS.h("th.num", {}, "tokens"), MS.h("th", {}, "Top tokens"), MS.h("th", {}, "Explanation"))),
      MS.h("tbody", {}, rows.map(([id, b]) => featureRow(r, id, b.act, MS.h("td.num", {}, b.count), results))));
  }

  MS.views.fires = { mount };
})(window.MS);
