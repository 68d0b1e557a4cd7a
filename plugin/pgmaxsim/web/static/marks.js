// Marks the matched words of each result's snippet: asks /marks (the row's maxsim.explain) for every
// snippet that has a data-marks URL, after the page has come, and rebuilds the snippet from the
// pieces with text nodes and <mark> elements (no HTML from the response is ever parsed).
"use strict";
document.querySelectorAll("[data-marks]").forEach((el) => {
  fetch(el.dataset.marks, { credentials: "same-origin" })
    .then((r) => (r.ok ? r.json() : null))
    .then((body) => {
      if (!body || !Array.isArray(body.pieces)) return;
      const parts = body.pieces.map(([text, weight]) => {
        if (weight === null) return document.createTextNode(text);
        const m = document.createElement("mark");
        m.className = "w" + Math.max(0, Math.min(3, weight | 0));
        m.textContent = text;
        return m;
      });
      el.replaceChildren(...parts);
      el.classList.add("marked");
    })
    .catch(() => {})  // the plain snippet stays
    .finally(() => { el.dataset.marksDone = "1"; });
});
