// wsrelay's admin dashboard: live sessions, refreshed every second from GET /sessions.
// Shipped in the package and served by the admin port; loads nothing from elsewhere.
// With [relay] admin_token set, the browser asks for it once (HTTP Basic: any user name,
// the token as password) and sends it again with every request of this page.
"use strict";

const REFRESH_MS = 1000;
const SPARK_POINTS = 60;
const MAX_PAGES = 50;             // 50 pages of 1,000: the most a page will draw

const history = new Map();        // session id -> {last: frames total, at: ms, rates: [frames/s]}
let sortKey = "jitter";
let sortAscending = false;

function worst(session, key) {
  const up = session.up[key], down = session.down[key];
  return Math.max(up === null ? -1 : up, down === null ? -1 : down);
}

const SORTS = {
  id: s => s.id, agent: s => `${s.agent}.${s.organization}`, client: s => s.client,
  age_s: s => s.age_s, state: s => s.state, frames: s => s.up.frames + s.down.frames,
  first_frame: s => worst(s, "first_frame_ms"), jitter: s => worst(s, "jitter_ms"),
  max_gap: s => worst(s, "max_gap_ms"), gaps: s => s.up.gaps + s.down.gaps,
};

async function fetchAll() {
  const sessions = [];
  let cursor = null;
  for (let page = 0; page < MAX_PAGES; page++) {
    const url = cursor ? `/sessions?cursor=${encodeURIComponent(cursor)}` : "/sessions";
    const response = await fetch(url, {cache: "no-store"});
    if (!response.ok) throw new Error(`GET /sessions: ${response.status}`);
    const body = await response.json();
    sessions.push(...body.sessions);
    cursor = body.next;
    if (!cursor) break;
  }
  return sessions;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function pair(session, key, digits) {
  const show = v => (v === null || v === undefined) ? "–" : Number(v).toFixed(digits);
  return `${show(session.up[key])} / ${show(session.down[key])}`;
}

function sparkline(rates) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", "120");
  svg.setAttribute("height", "24");
  const top = Math.max(1, ...rates);
  // newest at the right edge, one step per refresh
  const step = 120 / (SPARK_POINTS - 1);
  const points = rates.map((r, i) =>
    `${(120 - (rates.length - 1 - i) * step).toFixed(1)},${(22 - r * 20 / top).toFixed(1)}`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
  const title = document.createElementNS(ns, "title");
  title.textContent = `${rates.length ? rates[rates.length - 1].toFixed(0) : 0} frames/s now`;
  svg.appendChild(title);
  return svg;
}

function track(sessions, now) {
  const live = new Set();
  for (const s of sessions) {
    live.add(s.id);
    const total = s.up.frames + s.down.frames;
    const seen = history.get(s.id);
    if (!seen) { history.set(s.id, {last: total, at: now, rates: []}); continue; }
    const seconds = (now - seen.at) / 1000;
    if (seconds > 0) seen.rates.push((total - seen.last) / seconds);
    if (seen.rates.length > SPARK_POINTS) seen.rates.shift();
    seen.last = total;
    seen.at = now;
  }
  for (const id of [...history.keys()]) if (!live.has(id)) history.delete(id);
}

async function endSession(id, button) {
  button.disabled = true;
  const response = await fetch(`/sessions/${encodeURIComponent(id)}`, {method: "DELETE"});
  if (!response.ok && response.status !== 404) {
    button.disabled = false;
    document.getElementById("status").textContent = `could not end ${id}: ${response.status}`;
    return;
  }
  await refresh();
}

function drawAgents(sessions) {
  const counts = new Map();
  for (const s of sessions) {
    const key = `${s.agent}\u0000${s.organization}`;
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  const body = document.querySelector("#agents tbody");
  body.replaceChildren();
  for (const [key, n] of [...counts.entries()].sort((a, b) => b[1] - a[1])) {
    const [agent, organization] = key.split("\u0000");
    const row = document.createElement("tr");
    cell(row, agent); cell(row, organization); cell(row, String(n), "num");
    body.appendChild(row);
  }
}

function drawSessions(sessions) {
  const by = SORTS[sortKey];
  sessions.sort((a, b) => {
    const x = by(a), y = by(b);
    const order = x < y ? -1 : x > y ? 1 : 0;
    return sortAscending ? order : -order;
  });
  const body = document.querySelector("#sessions tbody");
  body.replaceChildren();
  for (const s of sessions) {
    const row = document.createElement("tr");
    row.dataset.sessionId = s.id;
    cell(row, s.id.slice(0, 8)).title = s.id;
    cell(row, `${s.agent}.${s.organization}`);
    cell(row, s.client);
    cell(row, s.age_s.toFixed(0), "num");
    cell(row, s.state);
    cell(row, `${s.up.frames} / ${s.down.frames}`, "num");
    cell(row, "").appendChild(sparkline((history.get(s.id) || {rates: []}).rates));
    cell(row, pair(s, "first_frame_ms", 0), "num");
    cell(row, pair(s, "jitter_ms", 1), "num");
    cell(row, pair(s, "max_gap_ms", 0), "num");
    cell(row, `${s.up.gaps} / ${s.down.gaps}`, s.up.gaps + s.down.gaps ? "num bad" : "num");
    const button = document.createElement("button");
    button.textContent = "End";
    button.title = "close this session (1008 to both sides)";
    button.addEventListener("click", () => endSession(s.id, button));
    cell(row, "").appendChild(button);
    body.appendChild(row);
  }
  for (const th of document.querySelectorAll("#sessions th[data-sort]")) {
    th.classList.toggle("sorted", th.dataset.sort === sortKey);
    th.classList.toggle("asc", th.dataset.sort === sortKey && sortAscending);
  }
}

let refreshing = false;
async function refresh() {
  if (refreshing) return;
  refreshing = true;
  const status = document.getElementById("status");
  try {
    const sessions = await fetchAll();
    track(sessions, performance.now());
    drawAgents(sessions);
    drawSessions(sessions);
    status.textContent = `${sessions.length} live session${sessions.length === 1 ? "" : "s"} · ` +
                         `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    status.textContent = `not updated: ${error.message}`;
  } finally {
    refreshing = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const th of document.querySelectorAll("#sessions th[data-sort]")) {
    th.addEventListener("click", () => {
      if (sortKey === th.dataset.sort) sortAscending = !sortAscending;
      else { sortKey = th.dataset.sort; sortAscending = false; }
      refresh();
    });
  }
  refresh();
  setInterval(refresh, REFRESH_MS);
});
