// Where the data comes from: the live server's JSON API, or the static site's data scripts.
// Both give the same shapes (monoscope/serve/records.py).
"use strict";
(function (MS) {
  const config = MS.config || {};

  // Static site: data/<name>.js calls MS.receive(name, data); a <script> tag loads it because
  // Chromium refuses fetch() on file:// pages.
  const waiting = new Map();
  const loads = new Map();
  MS.receive = function (name, data) {
    const resolve = waiting.get(name);
    if (resolve) {
      waiting.delete(name);
      resolve(data);
    }
  };
  function load(name) {
    if (!loads.has(name)) {
      loads.set(name, new Promise((resolve, reject) => {
        waiting.set(name, resolve);
        const script = document.createElement("script");
        script.src = "data/" + name + ".js";
        script.charset = "utf-8";
        script.onerror = () => {
          waiting.delete(name);
          loads.delete(name);
          reject(new Error("could not load data/" + name + ".js"));
        };
        script.onload = () => script.remove();
        document.head.append(script);
      }));
    }
    return loads.get(name);
  }

  function notFound(message) {
    const err = new Error(message);
    err.status = 404;
    return err;
  }

  async function api(path, options) {
    const response = await fetch(path, options);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = typeof body.detail === "string" ? body.detail : Array.isArray(body.detail)
        ? body.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ")
        : JSON.stringify(body.detail);
      const err = new Error(detail || response.status + " " + response.statusText);
      err.status = response.status;
      throw err;
    }
    return body;
  }

  function once(fn) {
    let promise = null;
    return () => promise || (promise = fn().catch((err) => { promise = null; throw err; }));
  }

  const post = (path, body) => api(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });

  const live = {
    mode: "live",
    meta: once(() => api("api/meta")),
    list: (q) => api("api/features?" + new URLSearchParams(q)),
    feature: (id) => api("api/features/" + encodeURIComponent(id)),
    map: once(() => api("api/map")),
    searchMeaning: (q) => post("api/search-meaning", { query: q.query, offset: q.offset, limit: q.limit }),
    similar: (f) => api("api/features/" + f.id + "/similar").then((r) => r.items),
    fires: (text) => post("api/fires", { text }),
    steer: (request) => post("api/steer", request),
    attribute: (request) => post("api/attribute", request),
  };

  // The static index is sharded (data/index/NNNN.js, index_shard_size features each): a page
  // by id loads the shards it shows; a sorted list or a search loads them all, once.
  const padded = (i, digits) => String(i).padStart(digits, "0");
  const indexShard = (i) => load("index/" + padded(i, config.index_digits));
  const COLUMNS = ["density", "max_act", "mean_act", "explanation", "score", "top_tokens"];
  const allColumns = once(async () => {
    const shards = await Promise.all(Array.from({ length: config.index_shards }, (_, i) => indexShard(i)));
    return Object.fromEntries(COLUMNS.map((key) => [key, [].concat(...shards.map((s) => s[key]))]));
  });
  // {word: [feature ids]} of the query's words, from the search shards that hold them.
  async function tokenIds(query) {
    const tokens = Object.create(null);  // no inherited keys: a word may be "constructor"
    await Promise.all(MS.search.words(query).map(async (word) => {
      const shard = MS.search.tokenShard(word, config.search_shards);
      const data = await load("search/" + padded(shard, config.search_digits));
      if (Object.prototype.hasOwnProperty.call(data.tokens, word)) tokens[word] = data.tokens[word];
    }));
    return tokens;
  }
  async function summaries(ids) {
    return Promise.all(ids.map(async (id) => {
      const shard = await indexShard(Math.floor(id / config.index_shard_size));
      return MS.search.summary(shard, id, shard.first);
    }));
  }

  const staticSite = {
    mode: "static",
    meta: () => load("meta"),
    async list(q) {
      const meta = await load("meta");
      const page = MS.search.idPage(meta.n_features, q);
      if (page) {
        const { ids, ...rest } = page;
        return { ...rest, items: await summaries(ids) };
      }
      const columns = await allColumns();
      const needsTokens = MS.search.needsTokenIndex(q.query || "");
      const tokens = needsTokens ? await tokenIds(q.query) : {};
      return MS.search.run(columns, tokens, q);
    },
    async feature(id) {
      const meta = await load("meta");
      const n = Number(id);
      if (!/^\d+$/.test(String(id)) || n >= meta.n_features) {
        throw notFound("no feature " + JSON.stringify(String(id)) + ": this store has ids 0.." + (meta.n_features - 1));
      }
      const shard = Math.floor(n / config.shard_size);
      const data = await load("features/" + String(shard).padStart(config.shard_digits, "0"));
      return data.features[n - data.first];
    },
    map: () => load("map"),
    searchMeaning: () => Promise.reject(new Error(MS.MEANING_NEEDS_SERVER)),
    // The export stored each explained feature's nearest explanations, or null and the reason.
    similar: (f) => (f.similar ? Promise.resolve(f.similar)
      : Promise.reject(new Error((config.similar && config.similar.note) || "no similar explanations in this site"))),
    fires: () => Promise.reject(new Error("“What fires” needs the live server: monoscope serve features.db")),
    steer: () => Promise.reject(new Error("Steering needs the live server: monoscope serve features.db")),
    attribute: () => Promise.reject(new Error("Attribution needs the live server: monoscope serve features.db")),
  };

  MS.MEANING_NEEDS_SERVER = "Search by meaning needs the live server, which runs the embedding model: " +
    "monoscope serve features.db. This static site searches the words of explanations and tokens.";

  MS.data = config.mode === "live" ? live : staticSite;
})(window.MS);
