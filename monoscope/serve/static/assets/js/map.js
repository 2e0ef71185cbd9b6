// The feature map view: the features with map coordinates (a sample of a big dictionary's, see
// GET /api/map); hover for a summary, click to open.
"use strict";
(function (MS) {
  async function mount(root, args, params) {
    const [meta, data] = await Promise.all([MS.data.meta(), MS.data.map()]);
    if (!data.ids.length) {
      root.append(MS.card("Feature map", MS.h("p.muted", {}, "This feature store has no map (analyze computes one from the decoder directions).")));
      return;
    }
    const canvas = MS.h("canvas.map-canvas", { id: "map-canvas" });
    const tip = MS.h("div.map-tip", { hidden: true });
    const focus = params.get("f") !== null ? Number(params.get("f")) : null;
    const reset = MS.h("button", { type: "button" }, "Reset view");
    const logd = data.density.filter((d) => d > 0).map(Math.log10);
    const dead = data.density.length - logd.length;
    const legend = MS.h("div.map-legend", {},
      MS.h("span", {}, "density 1e" + Math.min(...logd).toFixed(1)),
      MS.h("span.ramp", { style: { background: "linear-gradient(90deg," + [0, 0.25, 0.5, 0.75, 1].map(MS.rampColour).join(",") + ")" } }),
      MS.h("span", {}, "1e" + Math.max(...logd).toFixed(1)),
      dead ? MS.h("span", {}, MS.h("span.dead-dot"), dead + " never fired") : null);
    // In the document before plotting: the plot sizes itself from the canvas's layout.
    root.append(MS.h("section.card.map-card", {},
      MS.h("div.map-toolbar", {},
        MS.h("h2.card-title", {}, "Feature map · " + MS.fmt.int(data.ids.length) + " of " + MS.fmt.int(meta.n_features) + " features" +
          (data.total > data.ids.length ? " (an even sample by id)" : "")),
        MS.h("span.muted", {}, "UMAP of decoder directions. Scroll to zoom, drag to pan, click a point to open it."),
        MS.h("span.spacer"), legend, reset),
      canvas), tip);
    let shown = null;
    const plot = MS.mapPlot(canvas, data, {
      interactive: true,
      highlight: focus,
      onClick: (id) => { if (id !== null) location.hash = "#/feature/" + id; },
      onHover: (id, x, y) => {
        if (id === null) { tip.hidden = true; shown = null; return; }
        tip.hidden = false;
        tip.style.left = x + 14 + "px";
        tip.style.top = y + 14 + "px";
        if (shown !== id) {
          shown = id;
          tip.replaceChildren(MS.h("strong", {}, "Feature " + MS.featureName(id)));
          describe(id).then((s) => {
            if (shown !== id || !s) return;
            tip.append(MS.chips(s.top_tokens), MS.h("div.muted", {}, "density " + MS.fmt.percent(s.density) + (s.explanation ? " · " + s.explanation : "")));
          });
        }
      },
    });
    reset.addEventListener("click", () => plot.reset());
    if (focus !== null) plot.focus(focus);
  }

  const cache = new Map();
  // A feature's summary: a search for "#id" (the static site answers it from its index).
  function describe(id) {
    if (!cache.has(id)) {
      cache.set(id, MS.data.list({ query: "#" + id, limit: 1 }).then((r) => r.items[0]).catch(() => null));
    }
    return cache.get(id);
  }

  MS.views.map = { mount };
})(window.MS);
