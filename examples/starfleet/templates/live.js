// Live updates for Starfleet pages: each element with data-rows, data-html or data-counts
// names a Server-Sent Events stream. EventSource reconnects by itself after a cut and sends
// the id of the last event it got (Last-Event-ID): the server resumes the feed from there.
"use strict";
window.starfleetLive = [];

function connect(url, handlers) {
  const es = new EventSource(url);
  for (const [name, handle] of Object.entries(handlers)) {
    es.addEventListener(name, (e) => handle(JSON.parse(e.data)));
  }
  // The server could not resume (the cursor is too old): read the page's state again.
  es.addEventListener("reload", () => { es.close(); location.reload(); });
  window.starfleetLive.push(es);
}

// A page with lists (data-events on a container, data-list on each table body): one stream
// for them all. `{list}-reset` replaces a list's rows; `{list}-rows` gives the rows that
// changed since the last event, each once as it is now: added, replaced or (html: null)
// removed.
document.querySelectorAll("[data-events]").forEach((page) => {
  const handlers = {};
  page.querySelectorAll("[data-list]").forEach((body) => {
    handlers[body.dataset.list + "-reset"] = (d) => { body.innerHTML = d.html; };
    handlers[body.dataset.list + "-rows"] = (list) => list.forEach((d) => {
      const old = document.getElementById(d.id);
      if (d.html === null) { if (old) old.remove(); }
      else if (old) { old.outerHTML = d.html; }
      else { body.insertAdjacentHTML("beforeend", d.html); }
    });
  });
  connect(page.dataset.events, handlers);
});

// A block redrawn whole (the species chart, the leaderboard).
document.querySelectorAll("[data-html]").forEach((el) => connect(el.dataset.html, {
  html: (d) => { el.innerHTML = d.html; },
}));

// Counters by id: {"voyager": 3, ...} sets #count-voyager.
document.querySelectorAll("[data-counts]").forEach((el) => connect(el.dataset.counts, {
  counts: (d) => {
    document.querySelectorAll("[id^=count-]").forEach((c) => { c.textContent = d[c.id.slice(6)] || 0; });
  },
}));

// Browsers allow few connections per host (six over HTTP/1.1): a page left for another
// closes its streams at once instead of keeping them in the back-forward cache, and reads
// its state again if it is brought back from there.
window.addEventListener("pagehide", () => window.starfleetLive.forEach((es) => es.close()));
window.addEventListener("pageshow", (e) => { if (e.persisted) location.reload(); });
