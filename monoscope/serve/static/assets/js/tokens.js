// Token sequences highlighted by activation: white (zero) to orange (the feature's max), as in
// the paper's dashboards.
"use strict";
(function (MS) {
  const ORANGE = "255, 138, 0";
  const BLUE = "56, 132, 255";  // a judge's predicted activations, beside the true orange

  function colour(act, max, rgb) {
    const alpha = max > 0 ? Math.min(1, Math.max(0, act / max)) : 0;
    return alpha > 0 ? "rgba(" + (rgb || ORANGE) + ", " + alpha.toFixed(3) + ")" : "";
  }

  // Signed values: green (positive) or red (negative), opacity by |value| / max.
  function diverging(value, max) {
    const alpha = max > 0 ? Math.min(1, Math.abs(value) / max) : 0;
    if (!alpha) return "";
    return (value > 0 ? "rgba(46, 160, 96, " : "rgba(214, 69, 60, ") + (0.6 * alpha).toFixed(3) + ")";
  }

  // tokens [text], acts [number] -> <span class="tokseq"> with one span per token.
  // options: max (colour scale), centre (index outlined), onSelect(i) (click handler),
  // signed (colour by sign, for attributions), label (the value's name in the hover text),
  // titles [text] (extra hover text per token), predicted (shade in blue, as a judge's
  // predictions), marked [index] (tokens outlined, as a fuzzing judge saw them marked)
  function sequence(tokens, acts, options) {
    const { max = Math.max(...acts.map(Math.abs), 0), centre = -1, onSelect = null, signed = false,
      label = "activation", titles = null, predicted = false, marked = [] } = options || {};
    return MS.h("span.tokseq", {}, tokens.map((text, i) => {
      const act = acts[i] || 0;
      const newline = text.includes("\n");
      const shown = newline ? text.replace(/\n/g, "↵") : text;
      const on = signed ? act !== 0 : act > 0;
      const cls = "span.tok" + (on ? ".on" : "") + (i === centre ? ".centre" : "") + (newline ? ".nl" : "") +
        (marked.includes(i) ? ".marked" : "");
      return MS.h(cls, {
        style: { backgroundColor: signed ? diverging(act, max) : colour(act, max, predicted ? BLUE : ORANGE) },
        title: JSON.stringify(text) + (on ? "  " + label + " " + MS.fmt.num(act, 4) : "") +
          (titles && titles[i] ? "\n" + titles[i] : ""),
        dataset: { act: act },
        onclick: onSelect ? () => onSelect(i) : null,
      }, shown);
    }));
  }

  // One example row: its activation, then its tokens.
  function example(ex, max) {
    return MS.h("div.example", {},
      MS.h("span.example-act", { title: "activation at the centre token" }, MS.fmt.num(ex.activation, 3)),
      sequence(ex.tokens, ex.acts, { max, centre: ex.centre }));
  }

  MS.tokens = { colour, diverging, sequence, example };
})(window.MS);
