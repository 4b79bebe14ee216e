// The mesh dashboard: asks the gateway for /_mesh/state every second and draws it.
// No build step, no dependency: an ES module the gateway serves from the package.

const REFRESH_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";

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
    el("line", {
      x1: a[0], y1: a[1], x2: b[0], y2: b[1],
      class: link.queued > 0 ? "link busy" : "link",
      "data-link": `${link.from}>${link.to}`,
    }, svg);
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
    ];
    for (const [value, cls] of cells) {
      const cell = document.createElement("td");
      cell.textContent = value;
      if (cls) cell.className = cls;
      row.appendChild(cell);
    }
    return row;
  });
  body.replaceChildren(...rows);
}

function draw(state) {
  text("mesh-name", state.mesh);
  text("count-services", state.services.filter((s) => s.nodes > 0).length);
  text("count-nodes", state.nodes.length);
  text("count-sessions", state.sessions ?? "–");
  text("count-dead", state.dead_letters ?? "–");
  drawGraph(state);
  drawTable(state);
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
