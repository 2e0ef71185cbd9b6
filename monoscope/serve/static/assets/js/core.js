// Shared helpers: element building, number formats, hash routes.
"use strict";
window.MS = window.MS || {};
(function (MS) {
  MS.views = {};

  // h("div.card", {onclick: f, title: "x"}, child, "text", [more children]) -> HTMLElement
  MS.h = function (spec, attrs, ...children) {
    const [tag, ...classes] = spec.split(".");
    const el = document.createElement(tag || "div");
    if (classes.length) el.className = classes.join(" ");
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else el.setAttribute(key, value === true ? "" : value);
    }
    MS.append(el, children);
    return el;
  };

  MS.append = function (el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  };

  // SVG elements need their namespace.
  MS.svg = function (tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) el.setAttribute(key, value);
    }
    MS.append(el, children);
    return el;
  };

  MS.fmt = {
    num(x, digits = 3) {
      if (x === null || x === undefined || Number.isNaN(x)) return "–";
      if (x === 0) return "0";
      const abs = Math.abs(x);
      if (abs >= 1e5 || abs < 1e-3) return x.toExponential(digits - 1).replace("e+", "e");
      return Number(x.toPrecision(digits)).toLocaleString("en-US", { maximumFractionDigits: 6 });
    },
    int(n) {
      return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
    },
    percent(d) {
      if (!d) return "0%";
      const p = d * 100;
      return (p >= 10 ? p.toFixed(1) : p >= 1 ? p.toFixed(2) : p.toPrecision(2)) + "%";
    },
    oneIn(d) {
      return d > 0 ? "1 in " + MS.fmt.int(Math.max(1, Math.round(1 / d))) + " tokens" : "never fired";
    },
    tokensCount(n) {
      if (!n) return "0";
      if (n >= 1e6) return (n / 1e6).toPrecision(3) + "M";
      if (n >= 1e3) return (n / 1e3).toPrecision(3) + "k";
      return String(n);
    },
  };

  // Token text as shown in chips: whitespace made visible.
  MS.visibleToken = function (text) {
    if (text === "") return "∅";
    return text.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/^ +| +$/g, (s) => "·".repeat(s.length));
  };

  MS.featureName = function (id) {
    return (MS.meta && MS.meta.label ? MS.meta.label + "/" : "#") + id;
  };

  // "#/feature/12?x=1" -> {path: "feature/12", params: URLSearchParams}
  MS.parseHash = function () {
    const raw = location.hash.replace(/^#\/?/, "");
    const q = raw.indexOf("?");
    return {
      path: q < 0 ? raw : raw.slice(0, q),
      params: new URLSearchParams(q < 0 ? "" : raw.slice(q + 1)),
    };
  };

  MS.hashFor = function (path, params) {
    const clean = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null && v !== "") clean.set(k, v);
    }
    const query = clean.toString();
    return "#/" + path + (query ? "?" + query : "");
  };

  MS.featureLink = function (id, content, attrs) {
    return MS.h("a.feature-link", { href: "#/feature/" + id, ...(attrs || {}) }, content ?? MS.featureName(id));
  };

  MS.chips = function (tokens, extraClass) {
    return MS.h("span.chips", {}, (tokens || []).map((t) =>
      MS.h("span.chip" + (extraClass ? "." + extraClass : ""), { title: JSON.stringify(t) }, MS.visibleToken(t))));
  };

  MS.card = function (title, body, attrs) {
    return MS.h("section.card", attrs || {}, title ? MS.h("h2.card-title", {}, title) : null, body);
  };

  MS.errorCard = function (err) {
    return MS.h("section.card.error-card", {},
      MS.h("h2.card-title", {}, err && err.status === 404 ? "Not found" : "Something went wrong"),
      MS.h("p", {}, err && err.message ? err.message : String(err)));
  };
})(window.MS);
