// Attribution (live server only): which features of a prompt its next token depends on.
// Attribution = activation × gradient of the target's log-probability (one backward pass);
// ablation = the measured change when that feature is zeroed at that token (POST api/attribute).
"use strict";
(function (MS) {
  const state = { prompt: "The capital of France is", target: " Paris", top: 20, chat: false, result: null, position: null };

  function mount(root) {
    if (MS.data.mode !== "live") {
      root.append(MS.card("Attribution", MS.h("p", {},
        "This needs the model, so it runs on the live server only: ",
        MS.h("code", {}, "monoscope serve features.db"), ".")));
      return;
    }
    const limits = MS.config.steer || { max_rows: 50 };
    const prompt = MS.h("textarea.fires-text", { id: "attr-prompt", rows: 2, placeholder: "A prompt whose next token to explain", "aria-label": "Prompt" });
    prompt.value = state.prompt;
    const target = MS.h("input.attr-target", {
      id: "attr-target", type: "text", value: state.target, "aria-label": "Target token",
      placeholder: "empty: the model's own next token",
    });
    const top = MS.h("input.steer-number", { id: "attr-top", type: "number", min: 1, max: limits.max_rows, step: 1, value: state.top });
    const chat = MS.h("input", { type: "checkbox", id: "attr-chat", checked: state.chat });
    const status = MS.h("div.fires-status", { id: "attr-status", role: "status" });
    const button = MS.h("button.primary", { type: "submit", id: "attr-run" }, "Run");
    const results = MS.h("div.fires-results", { id: "attr-results" });
    const form = MS.h("form.fires-form", {
      async onsubmit(e) {
        e.preventDefault();
        Object.assign(state, { prompt: prompt.value, target: target.value, top: Number(top.value), chat: chat.checked });
        if (!state.prompt.trim()) { status.textContent = "Type a prompt first."; return; }
        button.disabled = true;
        status.classList.remove("error");
        status.textContent = "Running the model forwards and backwards, then " + state.top + " ablations… (the first run loads the model)";
        try {
          state.result = await MS.data.attribute({ prompt: state.prompt, target: state.target, top: state.top, chat: state.chat });
          state.position = null;
          status.textContent = "";
          render(results);
        } catch (err) {
          status.textContent = err.message;
          status.classList.add("error");
        } finally {
          button.disabled = false;
        }
      },
    },
    prompt,
    MS.h("div.steer-controls", {},
      MS.h("label.steer-field", {}, MS.h("span.steer-label", {}, "Target token"), target),
      MS.h("label.steer-field", {}, MS.h("span.steer-label", {}, "Rows"), top),
      MS.h("label.steer-check", { title: "Wrap the prompt in the model's chat template as a user turn" }, chat, "chat format"),
      button,
      MS.h("span.muted", {}, "The target must be one token; write its leading space (“ Paris”).")),
    status);
    root.append(MS.card("Attribution: which features the next token depends on", form), results);
    if (state.result) render(results);
  }

  function summary(r, id) {
    return r.features[String(id)] || { id, top_tokens: [], explanation: null };
  }

  function signed(x, digits) {
    return (x > 0 ? "+" : "") + MS.fmt.num(x, digits);
  }

  function render(results) {
    const r = state.result;
    const totals = r.position_totals;
    const seq = MS.tokens.sequence(r.tokens, totals, {
      signed: true, label: "total attribution", centre: state.position === null ? -1 : state.position,
      onSelect: (i) => { state.position = i; render(results); },
    });
    const c = r.correlation;
    const facts = [
      ["Next token", MS.chips([r.target.text], "big"), r.target.source === "model" ? "the model's top token" : "given"],
      ["Probability", MS.fmt.num(r.probability, 3), "log-prob " + MS.fmt.num(r.metric.value, 3)],
      ["Active pairs", MS.fmt.int(r.active_pairs), "(feature, token) with non-zero activation"],
      ["Attribution vs ablation", c.attribution_vs_ablation === null ? "–" : MS.fmt.num(c.attribution_vs_ablation, 2),
        "Spearman over the " + c.pairs + " ablated pairs"],
    ];
    results.replaceChildren(
      MS.h("section.card.overview", { id: "attr-summary" }, MS.h("div.overview-facts", {}, facts.map(([k, v, sub]) =>
        MS.h("div.fact", {}, MS.h("span.fact-key", {}, k), MS.h("span.fact-value", {}, v), MS.h("span.stat-sub", {}, sub)))),
        MS.h("span.muted", {}, MS.fmt.num(r.seconds, 2) + " s")),
      MS.h("div.fires-grid", {},
        MS.card("Prompt tokens", MS.h("div", {},
          MS.h("div.chart-caption", {}, "Shaded by the total attribution of every feature at the token: green raises the target's log-probability, red lowers it. Click a token for its features."),
          MS.h("div.fires-tokens", { id: "attr-tokens" }, seq))),
        MS.card(state.position === null ? "Token" : ["Token ", MS.chips([r.tokens[state.position]])], positionPanel(r, results))),
      MS.card("Features by |attribution|", table(r, results)));
  }

  function positionPanel(r, results) {
    if (state.position === null) return MS.h("p.muted", {}, "Click a token to list the features with the largest attribution there.");
    const p = r.by_position[state.position];
    if (!p.features.length) return MS.h("p.muted", {}, "No feature is active on this token (the SAE does not read the BOS token).");
    return MS.h("div", {},
      MS.h("div.chart-caption", {}, "Total attribution here " + signed(r.position_totals[state.position], 3)),
      MS.h("table.fires-table", { id: "attr-position-features" },
        MS.h("thead", {}, MS.h("tr", {}, MS.h("th", {}, "Feature"), MS.h("th.num", {}, "act"), MS.h("th.num", {}, "attribution"), MS.h("th", {}, "Top tokens"))),
        MS.h("tbody", {}, p.features.map((x) => MS.h("tr", {},
          MS.h("td", {}, MS.featureLink(x.feature, String(x.feature))),
          MS.h("td.num", {}, MS.fmt.num(x.activation, 3)),
          MS.h("td.num.shift-" + (x.attribution >= 0 ? "pos" : "neg"), {}, signed(x.attribution, 3)),
          MS.h("td", {}, MS.chips(summary(r, x.feature).top_tokens.slice(0, 3))))))));
  }

  function bar(value, scale) {
    const sign = value >= 0 ? "pos" : "neg";
    return MS.h("span.logit-bar-track.attr-bar", {},
      MS.h("span.logit-bar.logit-" + sign, { style: { width: (100 * Math.min(1, Math.abs(value) / scale)).toFixed(1) + "%" } }));
  }

  function table(r, results) {
    if (!r.rows.length) return MS.h("p.muted", {}, "No feature is active on this prompt.");
    const scale = Math.max(...r.rows.flatMap((x) => [Math.abs(x.attribution), Math.abs(x.ablation || 0)]), 1e-9);
    return MS.h("table.fires-table.attr-table", { id: "attr-rows" },
      MS.h("thead", {}, MS.h("tr", {},
        MS.h("th.num", {}, "#"), MS.h("th", {}, "Feature"), MS.h("th", {}, "Token"), MS.h("th.num", {}, "act"),
        MS.h("th", { colspan: 2, title: "activation × d log p(target) / d activation" }, "Attribution"),
        MS.h("th", { colspan: 2, title: "log p(target) clean − with the feature zeroed at this token (error term kept)" }, "Ablation effect"),
        MS.h("th", {}, "Top tokens"), MS.h("th", {}, "Explanation"))),
      MS.h("tbody", {}, r.rows.map((x, i) => {
        const s = summary(r, x.feature);
        return MS.h("tr" + (state.position === x.position ? ".selected" : ""), {
          onclick: () => { state.position = x.position; render(results); }, title: "show this token",
        },
          MS.h("td.num.muted", {}, i + 1),
          MS.h("td", {}, MS.featureLink(x.feature, String(x.feature), { onclick: (e) => e.stopPropagation() })),
          MS.h("td", {}, MS.chips([x.token]), MS.h("span.muted", {}, " @" + x.position)),
          MS.h("td.num", {}, MS.fmt.num(x.activation, 3)),
          MS.h("td.bar-cell", {}, bar(x.attribution, scale)),
          MS.h("td.num.shift-" + (x.attribution >= 0 ? "pos" : "neg"), {}, signed(x.attribution, 3)),
          MS.h("td.bar-cell", {}, x.ablation === null ? null : bar(x.ablation, scale)),
          MS.h("td.num" + (x.ablation === null ? ".muted" : ".shift-" + (x.ablation >= 0 ? "pos" : "neg")), {},
            x.ablation === null ? "–" : signed(x.ablation, 3)),
          MS.h("td", {}, MS.chips(s.top_tokens.slice(0, 3))),
          MS.h("td.explanation-cell", {}, s.explanation || ""));
      })));
  }

  MS.views.attribute = { mount };
})(window.MS);
