// The feature map on a canvas: points coloured by density, zoom and pan, hover and click.
"use strict";
(function (MS) {
  // Viridis stops: dark (rare features) to yellow (dense ones).
  const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const BUCKETS = 24;

  function rampColour(t) {
    const x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(x));
    const f = x - i;
    const c = RAMP[i].map((v, k) => Math.round(v + f * (RAMP[i + 1][k] - v)));
    return "rgb(" + c.join(",") + ")";
  }

  // data: {ids, x, y, density}. options: highlight (id), neighbours ([id]), muted (grey points),
  // interactive (zoom/pan/hover), onClick(id), onHover(id or null, clientX, clientY).
  function mapPlot(canvas, data, options) {
    const opts = { radius: 2.2, ...(options || {}) };
    const n = data.ids.length;
    const slot = new Map(data.ids.map((id, i) => [id, i]));
    // Colour by log density over the features that fired; dead ones (density 0) grey, last bucket.
    const logd = data.density.map((d) => (d > 0 ? Math.log10(d) : null));
    const alive = logd.filter((v) => v !== null);
    const lo = alive.length ? Math.min(...alive) : 0;
    const hi = alive.length ? Math.max(...alive) : 0;
    const bucket = logd.map((v) => (v === null ? BUCKETS
      : Math.min(BUCKETS - 1, Math.floor(((v - lo) / (hi - lo || 1)) * BUCKETS))));
    const colours = Array.from({ length: BUCKETS }, (_, b) => rampColour((b + 0.5) / BUCKETS));
    colours.push("rgb(200, 204, 210)");
    const xmin = Math.min(...data.x), xmax = Math.max(...data.x);
    const ymin = Math.min(...data.y), ymax = Math.max(...data.y);
    const view = { k: 1, tx: 0, ty: 0 };
    let width = 0, height = 0, hovered = null;
    const screen = new Float32Array(2 * n);

    function fit() {
      const dpr = window.devicePixelRatio || 1;
      width = canvas.clientWidth;
      height = canvas.clientHeight;
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
      canvas.getContext("2d").setTransform(dpr, 0, 0, dpr, 0, 0);
    }

    function project() {
      const pad = 12;
      const s = Math.min((width - 2 * pad) / (xmax - xmin || 1), (height - 2 * pad) / (ymax - ymin || 1));
      const ox = (width - s * (xmax - xmin)) / 2;
      const oy = (height - s * (ymax - ymin)) / 2;
      for (let i = 0; i < n; i++) {
        screen[2 * i] = view.tx + view.k * (ox + s * (data.x[i] - xmin));
        screen[2 * i + 1] = view.ty + view.k * (height - oy - s * (data.y[i] - ymin));
      }
    }

    function dot(ctx, i, r) {
      ctx.moveTo(screen[2 * i] + r, screen[2 * i + 1]);
      ctx.arc(screen[2 * i], screen[2 * i + 1], r, 0, 2 * Math.PI);
    }

    function draw() {
      const ctx = canvas.getContext("2d");
      project();
      ctx.clearRect(0, 0, width, height);
      const r = opts.radius * Math.min(3, Math.sqrt(view.k));
      if (opts.muted) {
        ctx.fillStyle = "rgba(120, 130, 145, 0.35)";
        ctx.beginPath();
        for (let i = 0; i < n; i++) dot(ctx, i, r);
        ctx.fill();
      } else {
        for (let b = 0; b <= BUCKETS; b++) {
          ctx.fillStyle = colours[b];
          ctx.beginPath();
          for (let i = 0; i < n; i++) if (bucket[i] === b) dot(ctx, i, r);
          ctx.fill();
        }
      }
      for (const id of opts.neighbours || []) {
        if (!slot.has(id)) continue;
        ctx.beginPath();
        dot(ctx, slot.get(id), r + 2.5);
        ctx.fillStyle = "#2563eb";
        ctx.fill();
      }
      for (const [id, colour] of [[opts.highlight, "#ff8a00"], [hovered, "#111"]]) {
        if (id === null || id === undefined || !slot.has(id)) continue;
        ctx.beginPath();
        dot(ctx, slot.get(id), r + 4.5);
        ctx.fillStyle = colour;
        ctx.fill();
        ctx.lineWidth = 1.5;
        ctx.strokeStyle = "#fff";
        ctx.stroke();
      }
    }

    function nearest(px, py, within) {
      let best = null, bestD = within * within;
      for (let i = 0; i < n; i++) {
        const dx = screen[2 * i] - px, dy = screen[2 * i + 1] - py;
        const d = dx * dx + dy * dy;
        if (d < bestD) { bestD = d; best = data.ids[i]; }
      }
      return best;
    }

    function local(evt) {
      const rect = canvas.getBoundingClientRect();
      return [evt.clientX - rect.left, evt.clientY - rect.top];
    }

    let drag = null;
    canvas.addEventListener("mousemove", (evt) => {
      const [px, py] = local(evt);
      if (drag) {
        view.tx = drag.tx + px - drag.x;
        view.ty = drag.ty + py - drag.y;
        drag.moved = drag.moved || Math.abs(px - drag.x) + Math.abs(py - drag.y) > 3;
        draw();
        return;
      }
      const id = nearest(px, py, 9);
      if (id !== hovered) {
        hovered = id;
        draw();
      }
      canvas.style.cursor = id === null ? (opts.interactive ? "grab" : "default") : "pointer";
      if (opts.onHover) opts.onHover(id, evt.clientX, evt.clientY);
    });
    canvas.addEventListener("mouseleave", () => {
      hovered = null;
      drag = null;
      draw();
      if (opts.onHover) opts.onHover(null);
    });
    canvas.addEventListener("mousedown", (evt) => {
      if (!opts.interactive) return;
      const [px, py] = local(evt);
      drag = { x: px, y: py, tx: view.tx, ty: view.ty, moved: false };
    });
    canvas.addEventListener("mouseup", () => { setTimeout(() => { drag = null; }, 0); });
    canvas.addEventListener("click", (evt) => {
      if (drag && drag.moved) return;
      const [px, py] = local(evt);
      const id = nearest(px, py, 9);
      if (opts.onClick) opts.onClick(id);
    });
    if (opts.interactive) {
      canvas.addEventListener("wheel", (evt) => {
        evt.preventDefault();
        const [px, py] = local(evt);
        const factor = Math.exp(-evt.deltaY * 0.0015);
        const k = Math.min(200, Math.max(0.5, view.k * factor));
        view.tx = px - ((px - view.tx) * k) / view.k;
        view.ty = py - ((py - view.ty) * k) / view.k;
        view.k = k;
        draw();
      }, { passive: false });
    }

    const resize = new ResizeObserver(() => { fit(); draw(); });
    resize.observe(canvas);
    fit();
    draw();

    return {
      reset() { Object.assign(view, { k: 1, tx: 0, ty: 0 }); draw(); },
      // Zoom in on one feature.
      focus(id, k = 2.5) {
        if (!slot.has(id)) return;
        Object.assign(view, { k: 1, tx: 0, ty: 0 });
        project();
        const i = slot.get(id);
        view.k = k;
        view.tx = width / 2 - k * screen[2 * i];
        view.ty = height / 2 - k * screen[2 * i + 1];
        draw();
      },
    };
  }

  MS.mapPlot = mapPlot;
  MS.rampColour = rampColour;
})(window.MS);
