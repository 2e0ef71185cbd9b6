// Small SVG charts drawn by hand: histograms and logit-effect bars.
"use strict";
(function (MS) {
  const W = 320;
  const H = 130;
  const M = { left: 40, right: 10, top: 10, bottom: 22 };

  function niceCount(n) {
    return n >= 1e4 ? MS.fmt.tokensCount(n) : String(Math.round(n));
  }

  // Bars between consecutive edges. log: place edges on a log10 axis (they must be > 0).
  // markers: [{x, label}] vertical lines at data values. barTitle(i) -> hover text.
  function histogram({ edges, counts, log = false, xFormat = MS.fmt.num, markers = [], barTitle, xLabel }) {
    const svg = MS.svg("svg", { viewBox: "0 0 " + W + " " + H, class: "chart", role: "img" });
    if (!edges || edges.length < 2 || !counts || !counts.length) {
      svg.append(MS.svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis-label" }, "no data"));
      return svg;
    }
    const useLog = log && edges.every((e) => e > 0);
    const pos = (v) => (useLog ? Math.log10(v) : v);
    const x0 = pos(edges[0]);
    const x1 = pos(edges[edges.length - 1]);
    const yMax = Math.max(...counts, 1);
    const sx = (v) => M.left + ((pos(v) - x0) / (x1 - x0 || 1)) * (W - M.left - M.right);
    const sy = (c) => H - M.bottom - (c / yMax) * (H - M.top - M.bottom);

    for (const frac of [0, 0.5, 1]) {
      const y = sy(frac * yMax);
      svg.append(MS.svg("line", { x1: M.left, x2: W - M.right, y1: y, y2: y, class: frac ? "grid" : "axis" }));
      svg.append(MS.svg("text", { x: M.left - 4, y: y + 3, "text-anchor": "end", class: "axis-label" }, niceCount(frac * yMax)));
    }
    counts.forEach((c, i) => {
      if (!c) return;
      const left = sx(edges[i]);
      const width = Math.max(1, sx(edges[i + 1]) - left - 0.6);
      const bar = MS.svg("rect", { x: left, y: sy(c), width, height: H - M.bottom - sy(c), class: "bar" });
      bar.append(MS.svg("title", {}, barTitle ? barTitle(i) : xFormat(edges[i]) + " – " + xFormat(edges[i + 1]) + ": " + c));
      svg.append(bar);
    });
    for (const v of ticks(edges[0], edges[edges.length - 1], useLog)) {
      const x = sx(v);
      // Labels at the ends align inwards so they are not cut off.
      const anchor = x > W - M.right - 12 ? "end" : x < M.left + 12 ? "start" : "middle";
      svg.append(MS.svg("line", { x1: x, x2: x, y1: H - M.bottom, y2: H - M.bottom + 3, class: "axis" }));
      svg.append(MS.svg("text", { x, y: H - M.bottom + 13, "text-anchor": anchor, class: "axis-label" }, xFormat(v)));
    }
    for (const m of markers) {
      if (m.x === null || m.x === undefined || (useLog && m.x <= 0)) continue;
      const x = Math.min(W - M.right, Math.max(M.left, sx(m.x)));
      svg.append(MS.svg("line", { x1: x, x2: x, y1: M.top, y2: H - M.bottom, class: "marker " + (m.cls || "") }));
      svg.append(MS.svg("text", { x: x + (x > W - 60 ? -3 : 3), y: M.top + 8, "text-anchor": x > W - 60 ? "end" : "start", class: "marker-label" }, m.label));
    }
    if (xLabel) svg.append(MS.svg("title", {}, xLabel));
    return svg;
  }

  // Tick values: powers of ten on a log axis, else five even steps.
  function ticks(lo, hi, log) {
    if (log) {
      const out = [];
      for (let p = Math.ceil(Math.log10(lo)); p <= Math.floor(Math.log10(hi)); p++) out.push(10 ** p);
      if (out.length >= 2) return out;
      return [lo, Math.sqrt(lo * hi), hi];
    }
    const step = (hi - lo) / 4;
    const out = [];
    for (let i = 0; i <= 4; i++) out.push(lo + i * step);
    return out;
  }

  // Rows of token chip + bar + value; bars scaled to `scale` (the largest |effect| shown).
  function logitList(entries, scale, sign) {
    if (!entries || !entries.length) return MS.h("p.muted", {}, "none");
    return MS.h("div.logits", {}, entries.map(([, text, effect]) =>
      MS.h("div.logit-row", { title: JSON.stringify(text) + ": " + effect },
        MS.h("span.chip.logit-" + sign, {}, MS.visibleToken(text)),
        MS.h("span.logit-bar-track", {},
          MS.h("span.logit-bar.logit-" + sign, { style: { width: (100 * Math.abs(effect) / (scale || 1)).toFixed(1) + "%" } })),
        MS.h("span.logit-value", {}, (effect > 0 ? "+" : "") + MS.fmt.num(effect, 3)))));
  }

  MS.charts = { histogram, logitList };
})(window.MS);
