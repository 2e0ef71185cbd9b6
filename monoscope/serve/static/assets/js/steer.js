// The feature page's steering panel (live server only): continue a prompt with this feature
// clamped, added, multiplied or ablated, and show the unsteered and steered continuations side
// by side with what the steering did (POST api/steer, monoscope/serve/steering.py).
"use strict";
(function (MS) {
  const MODES = [
    ["clamp", "clamp"],
    ["add", "add direction"],
    ["multiply", "multiply"],
    ["ablate", "ablate (0)"],
  ];
  const POSITIONS = [
    ["all", "every token"],
    ["generated", "generated tokens"],
    ["prompt", "prompt tokens"],
  ];
  // Slider range per unit: multiples of the max activation, absolute values (scaled by the
  // feature's max), and multiply's plain factors.
  const RANGES = { relative: [-10, 20, 0.5], absolute: [-10, 20, 0.5], factor: [-5, 10, 0.25] };

  // Kept across feature pages: a prompt typed once is reused on the next feature.
  const settings = {
    prompt: "Tell me about yourself.", mode: "clamp", strength: 2, unit: "relative",
    positions: "all", tokens: 32, temperature: 0.7, seed: 0, chat: true,
  };

  function field(label, control, cls) {
    return MS.h("label.steer-field" + (cls ? "." + cls : ""), {}, MS.h("span.steer-label", {}, label), control);
  }

  function select(id, options, value) {
    const el = MS.h("select.steer-select", { id }, options.map(([v, text]) => MS.h("option", { value: v }, text)));
    el.value = value;
    return el;
  }

  function number(id, value, attrs) {
    return MS.h("input.steer-number", { id, type: "number", value, ...attrs });
  }

  // What the current settings do, in words (the absolute value needs the feature's max).
  function describe(f, s) {
    const where = { all: "at every token", generated: "at generated tokens", prompt: "at prompt tokens" }[s.positions];
    const v = Number(s.strength);
    const abs = s.unit === "relative" ? v * f.max_act : v;
    const size = s.unit === "relative" ? MS.fmt.num(v, 3) + "× its max activation (" + MS.fmt.num(abs, 4) + ")" : MS.fmt.num(v, 4);
    if (s.mode === "ablate") return "Sets the feature to 0 " + where + "; the SAE's error term is kept.";
    if (s.mode === "multiply") return "Multiplies the feature's activation by " + MS.fmt.num(v, 3) + " " + where + ".";
    if (s.mode === "add") {
      return (s.unit === "relative"
        ? "Adds the decoder direction as if the feature fired at " + size
        : "Adds a vector of length " + size + " along the decoder direction") + " " + where + ".";
    }
    return "Clamps the feature to " + size + " " + where + ", keeping the SAE's error term.";
  }

  function panel(f) {
    const limits = MS.config.steer;
    // A feature that never fired has no max activation to take multiples of.
    const dead = !(f.max_act > 0);
    const prompt = MS.h("textarea.steer-prompt", { id: "steer-prompt", rows: 2, "aria-label": "Prompt" });
    prompt.value = settings.prompt;
    const mode = select("steer-mode", MODES, settings.mode);
    const slider = MS.h("input.steer-slider", { id: "steer-slider", type: "range", "aria-label": "Strength" });
    const value = number("steer-strength", settings.strength, { step: "any", "aria-label": "Strength value" });
    const unit = select("steer-unit", [["relative", "× max act"], ["absolute", "absolute"]], dead ? "absolute" : settings.unit);
    if (dead) unit.querySelector("option[value=relative]").disabled = true;
    const positions = select("steer-positions", POSITIONS, settings.positions);
    const tokens = number("steer-tokens", settings.tokens, { min: 1, max: limits.max_new_tokens, step: 1 });
    const temperature = number("steer-temperature", settings.temperature, { min: 0, max: 2, step: 0.1 });
    const seed = number("steer-seed", settings.seed, { min: 0, step: 1 });
    const chat = MS.h("input", { type: "checkbox", id: "steer-chat", checked: settings.chat });
    const hint = MS.h("div.steer-hint", { id: "steer-hint" });
    const status = MS.h("div.steer-status", { id: "steer-status", role: "status" });
    const button = MS.h("button.primary", { type: "submit", id: "steer-run" }, "Run");
    const results = MS.h("div.steer-results", { id: "steer-results" });

    function read() {
      Object.assign(settings, {
        prompt: prompt.value, mode: mode.value, strength: value.value, unit: dead ? settings.unit : unit.value,
        positions: positions.value, tokens: tokens.value, temperature: temperature.value,
        seed: seed.value, chat: chat.checked,
      });
    }

    // The slider's range follows the unit; the number box takes any value.
    function sync() {
      read();
      const kind = settings.mode === "multiply" ? "factor" : unit.value;
      const [lo, hi, step] = RANGES[kind];
      const scale = kind === "absolute" ? (f.max_act > 0 ? f.max_act : 1) : 1;
      Object.assign(slider, { min: lo * scale, max: hi * scale, step: step * scale });
      slider.value = settings.strength;
      const ablate = settings.mode === "ablate";
      slider.disabled = value.disabled = ablate;
      unit.disabled = ablate || settings.mode === "multiply";
      hint.textContent = describe(f, { ...settings, unit: kind });
    }

    slider.addEventListener("input", () => { value.value = slider.value; sync(); });
    value.addEventListener("input", sync);
    unit.addEventListener("change", () => {
      // Keep the strength: convert between multiples of the max and absolute values.
      if (f.max_act > 0 && settings.unit !== unit.value) {
        const v = Number(value.value);
        value.value = Number((unit.value === "absolute" ? v * f.max_act : v / f.max_act).toPrecision(4));
      }
      sync();
    });
    mode.addEventListener("change", () => {
      if (mode.value === "multiply" && settings.mode !== "multiply") value.value = 2;
      sync();
    });
    for (const el of [positions, tokens, temperature, seed, chat, prompt]) el.addEventListener("change", read);

    async function run(e) {
      e.preventDefault();
      read();
      if (!settings.prompt.trim()) { status.textContent = "Type a prompt first."; return; }
      const request = {
        feature: f.id, prompt: settings.prompt, mode: settings.mode,
        strength: Number(settings.strength), relative: unit.value === "relative",
        positions: settings.positions, max_new_tokens: Number(settings.tokens),
        temperature: Number(settings.temperature), seed: Number(settings.seed),
        chat: settings.chat ? null : false,
      };
      button.disabled = true;
      status.classList.remove("error");
      const started = Date.now();
      const tick = () => {
        status.textContent = "Generating " + request.max_new_tokens + " tokens unsteered and steered on the server… " +
          Math.round((Date.now() - started) / 1000) + " s (the first run loads the model)";
      };
      tick();
      const timer = setInterval(tick, 1000);
      try {
        const result = await MS.data.steer(request);
        status.textContent = "";
        results.replaceChildren(render(f, result));
      } catch (err) {
        status.textContent = err.message;
        status.classList.add("error");
      } finally {
        clearInterval(timer);
        button.disabled = false;
      }
    }

    const form = MS.h("form.steer-form", { onsubmit: run },
      prompt,
      MS.h("div.steer-controls", {},
        field("Mode", mode),
        field("Strength", MS.h("span.steer-strength", {}, slider, value, unit), "grow"),
        field("Where", positions),
        field("Tokens", tokens),
        field("Temperature", temperature),
        field("Seed", seed)),
      MS.h("div.steer-actions", {}, button,
        MS.h("label.steer-check", { title: "Wrap the prompt in the model's chat template as a user turn, when it has one" },
          chat, "chat format"),
        hint),
      status);
    sync();
    return MS.h("div.steer-panel", {}, form, results);
  }

  // --- the result ----------------------------------------------------------------------------

  function mean(values) {
    const xs = values.filter((v) => v !== null && v !== undefined);
    return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;
  }

  function stat(key, value, sub) {
    return MS.h("div.stat", {}, MS.h("div.stat-key", {}, key), MS.h("div.stat-value", {}, value),
      sub ? MS.h("div.stat-sub", {}, sub) : null);
  }

  function editLabel(edit) {
    if (edit.mode === "ablate") return "ablate";
    const v = MS.fmt.num(edit.value, 3) + (edit.relative ? "× max" : "");
    const exact = edit.relative ? " (" + MS.fmt.num(edit.absolute_value, 4) + ")" : "";
    return edit.mode + " " + (edit.mode === "multiply" ? "× " : "") + v + exact;
  }

  function column(title, sample, tokens, extra) {
    return MS.h("div.steer-column", {},
      MS.h("h3", {}, title),
      MS.h("div.steer-text", {}, tokens || MS.h("span.tokseq", {}, sample.text)),
      extra);
  }

  function render(f, r) {
    const run = r.runs[0];
    const edit = run.edits[0];
    const base = r.baseline[0];
    const steered = run.samples[0];
    const achieved = steered.achieved.find((a) => a.feature === f.id) || steered.achieved[0];
    const n = r.prompt_tokens.length;
    // Generated tokens of the steered text, shaded by the feature's own activation there
    // before the edit (what the unsteered model's SAE reads in the steered text).
    const before = achieved ? achieved.before.slice(n) : [];
    const after = achieved ? achieved.after.slice(n) : [];
    const seq = MS.tokens.sequence(steered.tokens, before, {
      max: f.max_act > 0 ? f.max_act : Math.max(...before.map((v) => v || 0), 0),
      titles: steered.tokens.map((_, i) => after[i] === null || after[i] === undefined ? "" :
        "before the edit " + MS.fmt.num(before[i], 4) + " · after " + MS.fmt.num(after[i], 4)),
    });
    const sampling = r.sampling.temperature > 0 ? "temperature " + r.sampling.temperature + ", seed " + r.sampling.seed : "greedy";
    const caption = MS.h("div.chart-caption", {},
      "Continuing “" + r.prompt + "”" + (r.chat ? " as a chat turn" : "") + " (" + n + " tokens) · " + sampling +
      " · the same seed both sides · " + MS.fmt.num(r.seconds, 2) + " s");

    const meanBefore = achieved ? mean(achieved.before.filter((_, i) => achieved.after[i] !== null)) : null;
    const target = achieved && achieved.target !== null ? "target " + MS.fmt.num(achieved.target, 4) : "before " + MS.fmt.num(meanBefore, 3);
    const figures = MS.h("div.stats.steer-stats", { id: "steer-figures" },
      stat("Achieved activation", MS.fmt.num(achieved && achieved.mean_after, 4),
        "mean over steered tokens; " + target + (achieved && achieved.target !== null ? ", before " + MS.fmt.num(meanBefore, 3) : "")),
      stat("KL per token", MS.fmt.num(steered.kl_mean_generated, 3),
        "steered ‖ unsteered next-token distributions, generated tokens (nats)"),
      stat("Perplexity", MS.fmt.num(base.perplexity_unsteered, 3) + " → " + MS.fmt.num(steered.perplexity_unsteered, 3),
        "unsteered → steered text, both under the unsteered model"),
      stat("Perplexity, steered model", MS.fmt.num(steered.perplexity_steered, 3), "the steered text under the model that wrote it"));

    return MS.h("div", {},
      caption,
      MS.h("div.steer-compare", {},
        column("Unsteered", base, null, MS.h("div.steer-foot", {}, "perplexity " + MS.fmt.num(base.perplexity_unsteered, 3))),
        column(["Steered · ", MS.h("span.steer-edit", {}, editLabel(edit))], steered, seq,
          MS.h("div.steer-foot", {}, "orange: this feature's own activation on the steered text (before the edit); hover a token for before/after"))),
      figures,
      tokenEffects(run.token_effects.find((e) => e.feature === f.id)));
  }

  // The feature's top direct-logit tokens: how much more likely steering made them.
  function tokenEffects(effect) {
    if (!effect || !effect.tokens.length) return null;
    const scale = Math.max(...effect.tokens.map((t) => Math.abs(t.logprob_shift)), 1e-9);
    return MS.h("div.steer-logits", { id: "steer-logits" },
      MS.h("h3", {}, "Its top logit tokens"),
      MS.h("table.steer-logit-table", {},
        MS.h("thead", {}, MS.h("tr", {}, MS.h("th", {}, "Token"), MS.h("th.num", {}, "Direct effect"),
          MS.h("th", { colspan: 2 }, "Log-prob shift (steered − unsteered model, on the steered text)"))),
        MS.h("tbody", {}, effect.tokens.map((t) => {
          const sign = t.logprob_shift >= 0 ? "pos" : "neg";
          return MS.h("tr", {},
            MS.h("td", {}, MS.chips([t.text])),
            MS.h("td.num", {}, MS.fmt.num(t.effect, 3)),
            MS.h("td.steer-shift-bar", {}, MS.h("span.logit-bar-track", {},
              MS.h("span.logit-bar.logit-" + sign, { style: { width: (100 * Math.abs(t.logprob_shift) / scale).toFixed(1) + "%" } }))),
            MS.h("td.num.shift-" + sign, {}, (t.logprob_shift > 0 ? "+" : "") + MS.fmt.num(t.logprob_shift, 3)));
        }))),
      MS.h("div.chart-caption", {},
        "Their total probability per generated token: " + MS.fmt.num(effect.mass_baseline, 3) + " unsteered → " +
        MS.fmt.num(effect.mass_steered, 3) + " steered; occurrences in the text: " +
        effect.count_baseline + " → " + effect.count_steered + "."));
  }

  MS.registerFeaturePanel({
    id: "steer", title: "Steer this feature", column: "main", order: 15,
    render(f, ctx) {
      return ctx.live && MS.config.steer ? panel(f) : null;
    },
  });
})(window.MS);
