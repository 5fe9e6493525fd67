// Starfleet's live pages. The server draws each page; this script subscribes to the app's
// publications through remodel-web's client (one WebSocket for every subscription of the
// tab) and redraws the page's live parts from the results, which the client keeps in order
// and resumes after a reconnect. No framework, no CDN.
import { connect, escapeHtml as h } from "/remodel/client.js";

const live = connect();
// For the tests (and the curious): the connection, and how often each part was redrawn.
window.starfleet = { live, redraws: {} };
const page = document.body.dataset;

function redrawn(part) {
  window.starfleet.redraws[part] = (window.starfleet.redraws[part] || 0) + 1;
}

// The connection badge: CSS colours it from <html data-remodel-state>; this sets its words.
const badge = document.getElementById("live-state");
const words = { live: "live", connecting: "connecting…", reconnecting: "reconnecting…", offline: "offline" };
const showState = (state) => {
  if (badge && !badge.dataset.ended) badge.textContent = words[state] || state;
};
showState(live.state);
live.onState(showState);

/**
 * Subscribes to `name` and draws each result with `draw(rows, sub)`. A subscription the
 * server ended (refused, rate limited, or it failed) is said on the badge, and its emptied
 * rows are not drawn as data: a list that went blank would read as "no crew" or "deleted".
 */
function watch(name, params, draw) {
  return live.subscribe(name, params, (rows, sub) => {
    if (sub.error) {
      if (badge) {
        badge.textContent = `stopped: ${sub.error.message || sub.error.code}. Reload the page`;
        badge.dataset.ended = sub.error.code;
      }
      return;
    }
    draw(rows, sub);
  });
}

/** A list's rows drawn into `el` (a <tbody> or <ul>), or `empty` when there are none. */
function fill(el, html, empty = "") {
  el.innerHTML = html || empty;
}

function options(items, selected) {
  return items.map((x) => `<option value="${h(x.id)}"${x.id === selected ? " selected" : ""}>${h(x.name)}</option>`).join("");
}

const pages = {
  // The ship list: crew counts per ship (a live group + count).
  index() {
    watch("ship_counts", {}, (rows) => {
      const counts = new Map(rows.map((r) => [r.group ?? "", r.reduction]));
      document.querySelectorAll("[data-count]").forEach((el) => {
        el.textContent = counts.get(el.dataset.count) ?? 0;
      });
      redrawn("counts");
    });
  },

  // A ship: its crew (by name), its away team, and the picker of officers not on it yet.
  ship() {
    const ship = page.id;
    let ships = [], crew = [], members = [], links = [];
    const crewBody = document.getElementById("crew");
    const awayBody = document.getElementById("away");
    const picker = document.getElementById("assign-member");
    const drawCrew = () => {
      const others = ships.filter((s) => s.id !== ship);
      fill(crewBody, crew.map((m) => `<tr id="crew-${h(m.id)}">
  <td><a href="/member/${h(m.id)}">${h(m.name)}</a></td><td>${h(m.rank)}</td><td>${h(m.species)}</td>
  <td><form class="inline" method="post" action="/member/${h(m.id)}/move">
    <select name="ship_id" aria-label="move ${h(m.name)} to">${options(others)}</select> <button>Move</button></form>
    <form class="inline" method="post" action="/member/${h(m.id)}/remove"><button>Remove</button></form>
    <a href="/member/${h(m.id)}">Edit</a></td></tr>`).join(""));
      redrawn("crew");
    };
    const drawAway = () => {
      const on = new Set(links.map((l) => l.crewmember_id));
      const team = members.filter((m) => on.has(m.id));
      fill(awayBody, team.map((m) => `<tr id="away-${h(m.id)}">
  <td><a href="/member/${h(m.id)}">${h(m.name)}</a></td><td>${h(m.rank)}</td>
  <td><form class="inline" method="post" action="/ship/${h(ship)}/away/${h(m.id)}/release"><button>Release</button></form></td></tr>`).join(""));
      const keep = picker.value;
      picker.innerHTML = options(members.filter((m) => !on.has(m.id)), keep);
      redrawn("away");
    };
    watch("ships", {}, (rows) => { ships = rows; drawCrew(); });
    watch("crew", { ship }, (rows) => { crew = rows; drawCrew(); });
    watch("members", {}, (rows) => { members = rows; drawAway(); });
    watch("away", { ship }, (rows) => { links = rows; drawAway(); });
  },

  // A member: details, missions, the personal log, and an edit form that says when someone
  // else changed the record (the server refuses to overwrite it then) or deleted it.
  member() {
    const id = page.id;
    let member = null, ships = [], missions = [];
    const form = document.getElementById("edit");
    const was = (f) => form.elements["was_" + f].value;
    const drawDetails = () => {
      if (!member) return;
      const ship = ships.find((s) => s.id === member.starship_id);
      document.getElementById("member-name").textContent = member.name;
      document.getElementById("member-rank").textContent = member.rank;
      document.getElementById("member-species").textContent = member.species;
      document.getElementById("member-ship").innerHTML = ship ? `<a href="/ship/${h(ship.id)}">${h(ship.name)}</a>` : "none";
      const on = missions.map((l) => ships.find((s) => s.id === l.starship_id)).filter(Boolean);
      document.getElementById("member-missions").innerHTML =
        on.map((s) => `<a href="/ship/${h(s.id)}">${h(s.name)}</a>`).join(", ") || "none";
      redrawn("member");
    };
    watch("member", { member: id }, (rows) => {
      member = rows[0] || null;
      if (!member) {
        // Deleted: nothing here can be done any more.
        document.getElementById("deleted").hidden = false;
        document.querySelectorAll(".controls").forEach((el) => { el.hidden = true; });
        redrawn("member");
        return;
      }
      const changed = ["name", "rank", "species"].some((f) => member[f] !== was(f));
      const note = document.getElementById("changed");
      note.hidden = !changed;
      note.innerHTML = changed
        ? `Someone else changed this member since you opened the page (now: ${h(member.name)}, ${h(member.rank)}, ${h(member.species)}). ` +
          `Saving would not overwrite it. <button type="button" id="take-theirs">Edit their version</button>`
        : "";
      const take = document.getElementById("take-theirs");
      if (take) take.onclick = () => {
        for (const f of ["name", "rank", "species"]) {
          form.elements[f].value = member[f];
          form.elements["was_" + f].value = member[f];
        }
        note.hidden = true;
      };
      drawDetails();
    });
    watch("ships", {}, (rows) => { ships = rows; drawDetails(); });
    watch("missions", { member: id }, (rows) => { missions = rows; drawDetails(); });

    const log = document.getElementById("log");
    if (!log) return; // the rules do not let this viewer read the log
    const logSub = live.subscribe("logs", { member: id }, (rows, sub) => {
      if (sub.error) {
        fill(log, `<li class="note">${h(sub.error.message)}</li>`);
        document.getElementById("log-form").hidden = true;
      } else {
        fill(log, rows.map((l) => `<li id="log-${h(l.id)}">${h(l.text)} <span class="when">by ${h(l.author)}</span></li>`).join(""),
          `<li class="note">Nothing written yet.</li>`);
      }
      redrawn("log");
    });
    // Writing goes through the `add_log` method (the form posts without this script).
    const logForm = document.getElementById("log-form");
    logForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const input = document.getElementById("log-text");
      const error = document.getElementById("log-error");
      try {
        await live.call("add_log", { member: id, text: input.value });
        input.value = "";
        error.textContent = "";
      } catch (err) {
        error.textContent = err.message;
      }
    });
    window.starfleet.log = logSub;
  },

  // Crew by species: the bar chart, redrawn as in routes/species.rs.
  species() {
    const chart = document.getElementById("chart");
    watch("species", {}, (rows) => {
      const BAR = 28;
      const max = Math.max(1, ...rows.map((r) => r.reduction));
      const label = Math.min(400, Math.max(60, Math.floor(Math.max(0, ...rows.map((r) => String(r.group).length)) * 17 / 2) + 12));
      const width = label + 10 + 400 + 60;
      const height = Math.max(BAR, rows.length * BAR);
      const bars = rows.map((r, i) => {
        const w = 40 + Math.floor(r.reduction * 360 / max);
        return `<g transform="translate(0,${i * BAR})" class="bar" data-species="${h(r.group)}" data-count="${r.reduction}">
  <text x="${label}" y="18" text-anchor="end" fill="#e8ecf5" font-size="14">${h(r.group)}</text>
  <rect x="${label + 10}" y="4" width="${w}" height="20" fill="#4f7fd9"></rect>
  <text x="${label + 16 + w}" y="19" fill="#ffcc66" font-size="14">${r.reduction}</text></g>`;
      }).join("");
      chart.innerHTML = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="crew by species">${bars}</svg>`;
      redrawn("species");
    });
  },

  // The sector map: ships move as anyone drags them. Positions come from the `map`
  // publication (at most one frame per 50 ms, each holding the latest position of every ship
  // that moved); a drag writes through the `move_ship` method, at most one write per 60 ms
  // (the connection may make 20 calls a second) and the final position on release.
  map() {
    const svg = document.getElementById("map");
    const NS = "http://www.w3.org/2000/svg";
    const shapes = new Map(); // ship id -> <g>
    let dragging = null; // {id, g, x, y, dx, dy}
    let lastSent = 0, timer = null;
    const place = (g, x, y) => g.setAttribute("transform", `translate(${x},${y})`);
    svg.querySelectorAll("g.ship").forEach((g) => shapes.set(g.dataset.ship, g));
    watch("map", {}, (rows) => {
      const seen = new Set();
      rows.forEach((s, i) => {
        seen.add(s.id);
        let g = shapes.get(s.id);
        if (!g) {
          g = document.createElementNS(NS, "g");
          g.classList.add("ship");
          g.dataset.ship = s.id;
          g.style.cursor = "grab";
          g.innerHTML = `<circle r="22" fill="#2f4b85" stroke="#ffcc66" stroke-width="2"></circle><text y="42" text-anchor="middle" fill="#e8ecf5" font-size="14">${h(s.name)}</text>`;
          svg.appendChild(g);
          shapes.set(s.id, g);
        }
        // Rows stored before the map existed have no position: a slot of their own.
        const x = s.x ?? 80 + (i % 8) * 90, y = s.y ?? 60 + Math.floor(i / 8) * 90;
        g.dataset.x = x; g.dataset.y = y;
        // The ship being dragged here follows the pointer, not the echo of its own writes.
        if (!dragging || dragging.id !== s.id) place(g, x, y);
      });
      for (const [id, g] of shapes) if (!seen.has(id)) { g.remove(); shapes.delete(id); }
      redrawn("map");
    });
    const at = (e) => {
      const p = new DOMPoint(e.clientX, e.clientY).matrixTransform(svg.getScreenCTM().inverse());
      return { x: p.x, y: p.y };
    };
    const clamp = (v, max) => Math.min(max, Math.max(0, Math.round(v)));
    const send = () => {
      if (!dragging) return;
      clearTimeout(timer); timer = null;
      lastSent = performance.now();
      const { id, x, y } = dragging;
      live.call("move_ship", { ship: id, x, y }).catch((e) => console.warn("move_ship", e.code, e.message));
    };
    svg.addEventListener("pointerdown", (e) => {
      const g = e.target.closest("g.ship");
      if (!g) return;
      const p = at(e);
      dragging = { id: g.dataset.ship, g, x: +g.dataset.x, y: +g.dataset.y, dx: p.x - g.dataset.x, dy: p.y - g.dataset.y };
      svg.setPointerCapture(e.pointerId);
      g.style.cursor = "grabbing";
    });
    svg.addEventListener("pointermove", (e) => {
      if (!dragging) return;
      const p = at(e);
      dragging.x = clamp(p.x - dragging.dx, svg.viewBox.baseVal.width);
      dragging.y = clamp(p.y - dragging.dy, svg.viewBox.baseVal.height);
      place(dragging.g, dragging.x, dragging.y);
      const wait = 60 - (performance.now() - lastSent);
      if (wait <= 0) send();
      else if (!timer) timer = setTimeout(send, wait);
    });
    const drop = () => {
      if (!dragging) return;
      send(); // the final position, whatever the throttle
      dragging.g.style.cursor = "grab";
      dragging = null;
    };
    svg.addEventListener("pointerup", drop);
    svg.addEventListener("pointercancel", drop);
  },

  // The database's reads and writes per second, a point per stats change (about a second).
  stats() {
    const chart = document.getElementById("stats-chart");
    const points = [];
    const W = 640, H = 240, PAD = 36, KEEP = 60;
    watch("stats", {}, (rows) => {
      const d = rows.find((r) => r.type === "database");
      if (!d) return;
      points.push({ r: d.reads_per_sec || 0, w: d.writes_per_sec || 0 });
      if (points.length > KEEP) points.shift();
      document.getElementById("reads-now").textContent = Math.round(points.at(-1).r);
      document.getElementById("writes-now").textContent = Math.round(points.at(-1).w);
      const max = Math.max(1, ...points.map((p) => Math.max(p.r, p.w))) * 1.1;
      const xAt = (i) => PAD + (i * (W - PAD - 8)) / (KEEP - 1);
      const yAt = (v) => H - PAD + 8 - (v * (H - PAD)) / max;
      const line = (key, colour) =>
        `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${points.map((p, i) => `${xAt(i).toFixed(1)},${yAt(p[key]).toFixed(1)}`).join(" ")}"></polyline>`;
      chart.innerHTML = `<line x1="${PAD}" y1="${H - PAD + 8}" x2="${W - 8}" y2="${H - PAD + 8}" stroke="#2a3658"></line>
<text x="4" y="16" fill="#98a3bd" font-size="12">${Math.round(max)}/s</text>
<text x="4" y="${H - PAD + 12}" fill="#98a3bd" font-size="12">0</text>
<text x="${W - 8}" y="${H - 6}" text-anchor="end" fill="#98a3bd" font-size="12">last ${KEEP} points</text>
${line("r", "#8fc1ff")}${line("w", "#ffcc66")}`;
      chart.dataset.points = points.length;
      chart.dataset.maxWrites = Math.max(+(chart.dataset.maxWrites || 0), points.at(-1).w);
      redrawn("stats");
    });
    document.getElementById("traffic").addEventListener("click", () =>
      live.call("traffic", {}).catch((e) => console.warn("traffic", e.code, e.message)));
  },

  // The holodeck's top five.
  leaderboard() {
    const scores = document.getElementById("scores");
    watch("leaderboard", {}, (rows) => {
      const body = rows.map((s, i) => `<tr class="score"><td>${i + 1}</td><td>${h(s.player)}</td><td>${h(s.points)}</td></tr>`).join("")
        || `<tr><td colspan="3">No scores yet.</td></tr>`;
      scores.innerHTML = `<table><tr><th>#</th><th>Player</th><th>Points</th></tr>${body}</table>`;
      redrawn("leaderboard");
    });
  },
};

pages[page.page]?.();
