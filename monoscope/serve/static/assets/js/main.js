// Start-up and hash routing: #/ (list), #/feature/ID, #/map, #/fires, #/attribute.
"use strict";
(function (MS) {
  const ROUTES = [
    [/^$/, "list"],
    [/^feature\/([^/]+)$/, "feature"],
    [/^map$/, "map"],
    [/^fires$/, "fires"],
    [/^attribute$/, "attribute"],
  ];
  const root = document.getElementById("view");
  let current = null;
  let token = 0;

  async function route() {
    const { path, params } = MS.parseHash();
    let name = null, args = [];
    for (const [pattern, view] of ROUTES) {
      const m = pattern.exec(path);
      if (m) { name = view; args = m.slice(1).map(decodeURIComponent); break; }
    }
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === name));
    if (!name) {
      current = null;
      root.replaceChildren(MS.errorCard({ status: 404, message: "No page " + JSON.stringify(location.hash) + ". " }));
      return;
    }
    const view = MS.views[name];
    const mine = ++token;
    try {
      if (current === name && view.update) {
        await view.update(args, params);
        return;
      }
      current = name;
      document.title = "monoscope · feature browser";
      const fresh = MS.h("div.view-body");
      root.replaceChildren(fresh);
      if (name !== "list") window.scrollTo(0, 0);
      await view.mount(fresh, args, params);
    } catch (err) {
      if (mine !== token) return;
      current = null;
      root.replaceChildren(MS.errorCard(err));
    }
  }
  MS.route = route;

  function runInfo(meta) {
    const sae = meta.sae || {};
    const parts = [
      (meta.model && meta.model.name) || sae.model,
      sae.site,
      sae.arch ? sae.arch + " SAE" : null,
      MS.fmt.int(meta.n_features) + " features",
    ].filter(Boolean);
    document.getElementById("run-info").textContent = parts.join(" · ");
  }

  function banner(meta) {
    if (meta.complete) return;
    const el = document.getElementById("banner");
    el.hidden = false;
    el.textContent = "This feature store is incomplete: `monoscope analyze` had processed " +
      MS.fmt.int(meta.tokens_seen || 0) + " tokens when it was read. Figures below are partial.";
  }

  async function start() {
    if (!MS.config || !MS.data) {
      root.replaceChildren(MS.errorCard(new Error(
        "This page needs its config.js: open it through `monoscope serve features.db`, or export a site with `monoscope export-site`.")));
      return;
    }
    if (MS.data.mode !== "live") document.getElementById("nav-fires").hidden = true;
    if (MS.data.mode !== "live" || !MS.config.steer) document.getElementById("nav-attribute").hidden = true;
    document.getElementById("jump").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = document.getElementById("jump-input");
      const id = input.value.trim().replace(/^#/, "");
      if (id) location.hash = "#/feature/" + id;
      input.value = "";
      input.blur();
    });
    try {
      MS.meta = await MS.data.meta();
    } catch (err) {
      root.replaceChildren(MS.errorCard(err));
      return;
    }
    runInfo(MS.meta);
    banner(MS.meta);
    window.addEventListener("hashchange", route);
    route();
  }

  start();
})(window.MS);
