// Search and sort over the static site's feature index: the same rules as
// monoscope/serve/catalog.py (Catalog.match / Catalog.search), so both modes list the same features.
"use strict";
(function (MS) {
  const ID_QUERY = /^#?(\d+)$/;

  // columns: the summary columns of features first.. (an index shard, or all of them).
  function summary(columns, id, first = 0) {
    const i = id - first;
    return {
      id,
      density: columns.density[i],
      max_act: columns.max_act[i],
      mean_act: columns.mean_act[i],
      explanation: columns.explanation[i],
      score: columns.score[i],
      top_tokens: columns.top_tokens[i],
    };
  }

  const words = (query) => query.trim().toLowerCase().split(/\s+/).filter(Boolean);

  // The search file holding a word's token entry: FNV-1a over its code points, as
  // monoscope/serve/export.py's token_shard.
  function tokenShard(word, shards) {
    let h = 0x811c9dc5;
    for (const ch of word) h = Math.imul(h ^ ch.codePointAt(0), 16777619) >>> 0;
    return h % shards;
  }

  // A page of the list by id (sort "id" and no query, or an id query in any sort), without
  // the whole index: {total, offset, limit, ids}; null for every other list.
  function idPage(n, { query = "", sort = "id", order = "asc", offset = 0, limit = 50 }) {
    const q = query.trim();
    const asId = ID_QUERY.exec(q);
    offset = Number(offset);
    limit = Number(limit);
    if (asId) {
      const id = Number(asId[1]);
      const ids = id < n && offset === 0 ? [id] : [];
      return { total: id < n ? 1 : 0, offset, limit, ids };
    }
    if (q || sort !== "id") return null;
    const ids = [];
    for (let r = offset; r < Math.min(n, offset + limit); r++) ids.push(order === "desc" ? n - 1 - r : r);
    return { total: n, offset, limit, ids };
  }

  function match(columns, tokens, query) {
    const n = columns.density.length;
    const q = query.trim();
    if (!q) return Array.from({ length: n }, (_, i) => i);
    const asId = ID_QUERY.exec(q);
    if (asId) {
      const id = Number(asId[1]);
      return id < n ? [id] : [];
    }
    const explained = columns.explanation.some((e) => e);
    let found = null;
    for (const word of words(q)) {
      const hits = new Set(tokens[word] || []);
      if (explained) {
        columns.explanation.forEach((e, i) => {
          if (e && e.toLowerCase().includes(word)) hits.add(i);
        });
      }
      found = found === null ? hits : new Set([...found].filter((i) => hits.has(i)));
    }
    return [...found].sort((a, b) => a - b);
  }

  MS.search = {
    summary,
    match,
    words,
    tokenShard,
    idPage,
    needsTokenIndex: (query) => query.trim() !== "" && !ID_QUERY.test(query.trim()),
    // -> {total, offset, limit, items}, as GET /api/features
    run(columns, tokens, { query = "", sort = "id", order = "asc", offset = 0, limit = 50 }) {
      const ids = match(columns, tokens, query);
      offset = Number(offset);
      limit = Number(limit);
      if (sort !== "id") {
        // Features without a value (no score yet) last in either order, as the server does.
        const v = columns[sort];
        const missing = (i) => (v[i] === null || v[i] === undefined ? 1 : 0);
        ids.sort((a, b) => missing(a) - missing(b) ||
          (missing(a) ? 0 : order === "desc" ? v[b] - v[a] : v[a] - v[b]) || a - b);
      } else if (order === "desc") {
        ids.reverse();
      }
      return {
        total: ids.length,
        offset,
        limit,
        items: ids.slice(offset, offset + limit).map((id) => summary(columns, id)),
      };
    },
  };
})(window.MS);
