// The mesh dashboard: asks the gateway for /_mesh/state every second and draws it.
// No build step, no dependency: an ES module the gateway serves from the package.
//
// The document is always "now"; the charts' history is kept here, in the page: one point
// per reading for the last HISTORY_SECONDS, saved in sessionStorage when the page goes
// (a reload keeps it), so that the gateway stores nothing for its viewers.

const REFRESH_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const HISTORY_SECONDS = 300;
const HISTORY_KEY = "wiremesh-dashboard-history";
/** The charts' shortest time axis, so that the first seconds do not fill them. */
const MIN_SPAN_SECONDS = 60;
/** A gap longer than this between two readings breaks a chart's line. */
const GAP_SECONDS = 5;

/** The token from `#token=...` (kept for this tab), else none: the cookie may carry one. */
function token() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("wiremesh-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("wiremesh-token");
}

function text(id, value) {
  document.getElementById(id).textContent = value ?? "–";
}

function fmt(value, digits = 1) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString(undefined, {
    minimumFractionDigits: digits, maximumFractionDigits: digits,
  });
}

function el(name, attributes = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

/** The app page the gateway serves (`home`), with this tab's token, as `wiremesh run` prints it. */
function showHome(state) {
  const link = document.getElementById("home-link");
  if (!state.home) {
    link.hidden = true;
    return;
  }
  const bearer = token();
  link.href = bearer ? `${state.home}#token=${encodeURIComponent(bearer)}` : state.home;
  link.hidden = false;
}

/** Services on a ring, each service's nodes on a small ring around it. */
function layout(state) {
  const width = 640, height = 480, cx = width / 2, cy = height / 2;
  const services = state.services.filter((s) => s.nodes > 0 || state.services.length <= 12);
  const ring = services.length > 1 ? Math.min(cx, cy) - 90 : 0;
  const where = new Map();
  const centres = new Map();
  services.forEach((service, i) => {
    const angle = (2 * Math.PI * i) / Math.max(services.length, 1) - Math.PI / 2;
    const sx = cx + ring * Math.cos(angle), sy = cy + ring * Math.sin(angle);
    centres.set(service.name, [sx, sy]);
    const mine = state.nodes.filter((n) => n.service === service.name);
    const small = mine.length > 1 ? 34 : 0;
    mine.forEach((node, j) => {
      const a = (2 * Math.PI * j) / mine.length - Math.PI / 2;
      where.set(node.id, [sx + small * Math.cos(a), sy + small * Math.sin(a)]);
    });
  });
  return { where, centres };
}

function drawGraph(state) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const { where, centres } = layout(state);
  for (const link of state.links) {
    const a = where.get(link.from), b = where.get(link.to);
    if (!a || !b) continue;
    const sessions = link.kind === "sessions";
    const line = el("line", {
      x1: a[0], y1: a[1], x2: b[0], y2: b[1],
      class: sessions ? "link session" : link.queued > 0 ? "link busy" : "link",
      "data-link": `${link.from}>${link.to}`,
    }, svg);
    if (!sessions) continue;
    line.dataset.sessions = String(link.sessions);
    const title = el("title", {}, line);
    title.textContent = `${link.sessions} session(s) of this gateway on ${link.to}`;
    const label = el("text", { x: (a[0] + b[0]) / 2, y: (a[1] + b[1]) / 2 - 4, class: "session-label" }, svg);
    label.textContent = String(link.sessions);
  }
  for (const [name, [x, y]] of centres) {
    const label = el("text", { x, y: y - 52, class: "service-label" }, svg);
    label.textContent = name;
  }
  for (const node of state.nodes) {
    const at = where.get(node.id);
    if (!at) continue;
    const errors = (node.errors_per_s ?? 0) > 0;
    const group = el("g", {
      class: `node ${node.state}${errors ? " errors" : ""}`,
      "data-node-id": node.id,
      "data-service": node.service,
    }, svg);
    el("circle", { cx: at[0], cy: at[1], r: 11 }, group);
    const title = el("title", {}, group);
    title.textContent = `${node.id} (${node.state}) ${fmt(node.calls_per_s)} calls/s`;
    const label = el("text", { x: at[0], y: at[1] + 24, class: "node-label" }, group);
    label.textContent = node.id;
  }
}

/** The node's circuits that are not closed: "a, b?" (? for half-open), "-" for none. */
function circuitsCell(circuits) {
  if (circuits == null) return ["-"];
  const names = Object.keys(circuits).sort();
  if (!names.length) return ["-"];
  return [names.map((n) => (circuits[n] === "half_open" ? `${n}?` : n)).join(", "), "bad"];
}

/** The table's column names, shown beside each value when the table turns into cards. */
const LABELS = Array.from(document.querySelectorAll("#nodes thead th"), (th) => th.textContent);

function drawTable(state) {
  const body = document.querySelector("#nodes tbody");
  const rows = state.nodes.map((node) => {
    const row = document.createElement("tr");
    row.dataset.nodeId = node.id;
    const cells = [
      [node.service], [node.id], [node.state],
      [fmt(node.calls_per_s), "n"],
      [fmt(node.errors_per_s), (node.errors_per_s ?? 0) > 0 ? "n bad" : "n"],
      [fmt(node.p50_ms, 2), "n"], [fmt(node.p99_ms, 2), "n"],
      [fmt(node.publish_dropped, 0), "n"], [fmt(node.link_queue, 0), "n"],
      circuitsCell(node.open_circuits),
    ];
    cells.forEach(([value, cls], i) => {
      const cell = document.createElement("td");
      cell.textContent = value;
      cell.dataset.label = LABELS[i];
      if (cls) cell.className = cls;
      row.appendChild(cell);
    });
    return row;
  });
  body.replaceChildren(...rows);
}

// ------------------------------------------------------------------ history and charts

/** One point per reading: {t, sessions, services: {name: [calls/s, errors/s, p99 ms]}}. */
const past = loadHistory();
const CHART_WIDTH = 300, CHART_HEIGHT = 40;
/** The least top of each chart's scale, so that noise near zero stays flat. */
const FLOOR = { calls: 1, errors: 1, p99: 1, sessions: 1 };

function loadHistory() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(HISTORY_KEY) ?? "[]");
    const since = Date.now() / 1000 - HISTORY_SECONDS;
    return Array.isArray(saved) ? saved.filter((point) => point.t >= since) : [];
  } catch {
    return [];
  }
}

addEventListener("pagehide", () => {
  try {
    sessionStorage.setItem(HISTORY_KEY, JSON.stringify(past));
  } catch {
    // storage full or refused: the next page starts a new history
  }
});

function record(state) {
  const last = past[past.length - 1];
  if (last && state.at <= last.t) return; // the same reading, shared with another page
  const services = {};
  for (const service of state.services) {
    if (service.calls_per_s === null || service.calls_per_s === undefined) continue;
    services[service.name] = [service.calls_per_s, service.errors_per_s, service.p99_ms];
  }
  past.push({ t: state.at, sessions: state.sessions ?? null, services });
  while (past[0].t < state.at - HISTORY_SECONDS) past.shift();
}

/** [title, service or "", [[label, kind, value of a point, digits], ...]] per card. */
function charts() {
  const names = new Set(past.flatMap((point) => Object.keys(point.services)));
  const total = (i) => (point) => {
    const figures = Object.values(point.services);
    return figures.length ? figures.reduce((sum, f) => sum + (f[i] ?? 0), 0) : null;
  };
  const of = (name, i) => (point) => point.services[name]?.[i] ?? null;
  return [
    ["whole mesh", "", [
      ["calls/s", "calls", total(0), 1], ["errors/s", "errors", total(1), 1],
      ["sessions here", "sessions", (point) => point.sessions, 0],
    ]],
    ...[...names].sort().map((name) => [name, name, [
      ["calls/s", "calls", of(name, 0), 1], ["errors/s", "errors", of(name, 1), 1],
      ["p99 ms", "p99", of(name, 2), 2],
    ]]),
  ];
}

/** "47 s", "3 min" */
function duration(seconds) {
  return seconds < 90 ? `${Math.round(seconds)} s` : `${Math.round(seconds / 60)} min`;
}

function drawCharts() {
  if (past.length < 2) return; // rates need two readings: the note stays
  const end = past[past.length - 1].t;
  // the charts span what the page has seen, from a minute up to HISTORY_SECONDS
  const seen = end - past[0].t;
  const span = Math.min(HISTORY_SECONDS, Math.max(MIN_SPAN_SECONDS, seen));
  text("history-span", `the last ${duration(seen)}`);
  const cards = charts().map(([title, service, series]) => {
    const card = document.createElement("div");
    card.className = "chart-card";
    if (service) card.dataset.service = service;
    const heading = document.createElement("h3");
    heading.textContent = title;
    card.append(heading, ...series.map((chart) => spark(chart, end, span)));
    return card;
  });
  document.getElementById("charts").replaceChildren(...cards);
}

/** One small chart: a label, the latest value, and a line over the last minutes. */
function spark([label, kind, value, digits], end, span) {
  const points = past.map((point) => [point.t, value(point)]);
  const values = points.map(([, v]) => v).filter((v) => v !== null);
  const top = Math.max(FLOOR[kind], ...values);
  const x = (t) => ((t - end + span) / span) * CHART_WIDTH;
  const y = (v) => CHART_HEIGHT - 1 - (v / top) * (CHART_HEIGHT - 2);
  let path = "", previous = null;
  for (const [t, v] of points) {
    if (v === null) {
      previous = null;
      continue;
    }
    const joined = previous !== null && t - previous <= GAP_SECONDS;
    path += `${joined ? "L" : "M"}${x(t).toFixed(1)} ${y(v).toFixed(1)}`;
    previous = t;
  }
  const row = document.createElement("div");
  row.className = `spark ${kind}`;
  row.dataset.chart = kind;
  const name = document.createElement("span");
  name.textContent = label;
  const latest = document.createElement("b");
  latest.textContent = fmt(points[points.length - 1][1], digits);
  const peak = values.length ? Math.max(...values) : null;
  const svg = el("svg", {
    viewBox: `0 0 ${CHART_WIDTH} ${CHART_HEIGHT}`, preserveAspectRatio: "none", role: "img",
    "aria-label": `${label} over the last ${duration(span)}, at most ${fmt(peak, digits)}`,
  });
  el("line", { x1: 0, y1: CHART_HEIGHT - 0.5, x2: CHART_WIDTH, y2: CHART_HEIGHT - 0.5 }, svg);
  if (path) el("path", { d: path }, svg);
  el("title", {}, svg).textContent = `${label}: at most ${fmt(peak, digits)} in the last ${duration(span)}`;
  row.append(name, latest, svg);
  return row;
}

function draw(state) {
  text("mesh-name", state.mesh);
  text("count-services", state.services.filter((s) => s.nodes > 0).length);
  text("count-nodes", state.nodes.length);
  text("count-sessions", state.sessions ?? "–");
  text("count-dead", state.dead_letters ?? "–");
  showHome(state);
  drawGraph(state);
  drawTable(state);
  record(state);
  drawCharts();
  document.body.dataset.version = String(state.version);
}

async function refresh() {
  const status = document.getElementById("status");
  const headers = {};
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  try {
    const answer = await fetch("state", { headers, credentials: "same-origin", cache: "no-store" });
    if (answer.status === 401 || answer.status === 403) {
      status.textContent = answer.status === 401
        ? "not signed in: open the URL with #token=<JWT> (wiremesh token)"
        : "this token may not see the mesh";
      status.className = "status down";
      return;
    }
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    draw(await answer.json());
    status.textContent = `live · ${new Date().toLocaleTimeString()}`;
    status.className = "status live";
  } catch (error) {
    status.textContent = `gateway unreachable (${error.message}); retrying`;
    status.className = "status down";
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
