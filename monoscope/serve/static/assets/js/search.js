// Search and sort over the static site's feature index: the same rules as
// monoscope/serve/catalog.py (Catalog.match / Catalog.search), so both modes list the same features.
"use strict";
(function (MS) {
  const ID_QUERY = /^#?(\d+)$/;

  function summary(columns, id) {
    return {
      id,
      density: columns.density[id],
      max_act: columns.max_act[id],
      mean_act: columns.mean_act[id],
      explanation: columns.explanation[id],
      score: columns.score[id],
      top_tokens: columns.top_tokens[id],
    };
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
    for (const word of q.toLowerCase().split(/\s+/).filter(Boolean)) {
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
