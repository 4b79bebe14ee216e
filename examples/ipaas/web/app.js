// The ipaas demo page: a WebSocket to a node of the `flows` service, through the gateway,
// and the gateway's HTTP door.
//
// - `{"op": "hello"}` over the socket, in the client's request/reply envelope, answers
//   `{"node", "flows": [{name, steps}]}`;
// - `POST /rpc/flows/start` `{flow, input, pace}` starts a run and answers at once
//   `{run, flow, steps, node, offset, epoch}`;
// - the run publishes its progress to the channel `flow-run:<run>`, which the page
//   subscribes to from the run's `started` publication (`offset`, `epoch`) on:
//   `{"event": "step", "run", "index", "connector", "node", "ms", "output"}` per step,
//   then `{"event": "done", "run", "output"}` or `{"event": "failed", "run", "error"}`.
//
// When the connection drops (the `flows` node died, the gateway restarted), the client
// reconnects and subscribes again with recovery: the steps published meanwhile arrive
// first, in order, none twice, and the run goes on on the page. When what was missed
// cannot be told, the page reloads the run with `POST /rpc/flows/run_state`.
import { connect } from "/_wiremesh/wiremesh.js";

const $ = (selector, root = document) => root.querySelector(selector);
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const fromJson = (bytes) => JSON.parse(decoder.decode(bytes));
const toJson = (value) => encoder.encode(JSON.stringify(value));

const token = new URLSearchParams(location.hash.slice(1)).get("token") || undefined;
// the gateway's dashboard, in a tab of its own (this page's session stays open, so the
// dashboard draws it), with the same token: it reads `#token=` too
if (token) $("#dashboard-link").href = `/_mesh/#token=${encodeURIComponent(token)}`;
/** @type {Map<string, {steps: string[]}>} */
const flows = new Map();
/** @type {Map<string, HTMLElement>} */
const runs = new Map();
/** what the runs' subscriptions got, for a reader of the console (and the tests):
 * `[run, event, index, recovered]` per publication, `[run, "subscribed", resubscribed,
 * recovered, publications]` per subscription */
const events = [];

const conn = connect({
  service: "flows",
  token,
  backoff: { initial: 250, max: 5000 },
  onStateChange: showState,
  onOpen: hello,
  onClose: (info) => {
    // the runs go on without the page: their subscriptions recover what they miss
    const status = info.reconnect ? "reconnecting\u2026" : "the connection is closed";
    for (const run of runs.values()) {
      if (run.dataset.state === "running") $(".status", run).textContent = status;
    }
    if (!info.reconnect) showClosed(info);
  },
});
globalThis.demo = { conn, flows, runs, events };

function showState(state) {
  const badge = $("#state");
  badge.dataset.state = state;
  badge.textContent = { waiting: "reconnecting", open: "live" }[state] ?? state;
  document.body.dataset.state = state;
  $("#run").disabled = state !== "open" || flows.size === 0;
}

function showClosed(info) {
  const why = {
    unauthorized: "the gateway refused the token: open the URL that `wiremesh run` printed",
    forbidden: "the gateway refused this page (403)",
    not_found: "no node of the flows service is running (404)",
  }[info.kind];
  $("#node").textContent = why ?? `closed (code ${info.code}${info.reason ? `: ${info.reason}` : ""})`;
}

async function hello() {
  try {
    const reply = fromJson(await conn.request(toJson({ op: "hello" }), { timeout: 5000 }));
    $("#node").textContent = `session on ${reply.node}`;
    document.body.dataset.node = reply.node;
    const select = $("#flow");
    const chosen = select.value;
    flows.clear();
    select.replaceChildren();
    for (const flow of reply.flows) {
      flows.set(flow.name, flow);
      select.append(new Option(flow.name, flow.name, false, flow.name === chosen));
    }
    showSteps();
    showState(conn.state);
  } catch (error) {
    $("#form-error").textContent = `could not list the flows: ${error.message}`;
  }
}

/** Call `flows.<method>` through the gateway's HTTP door; rejects with the problem's detail. */
async function call(method, payload) {
  const response = await fetch(`/rpc/flows/${method}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    body: JSON.stringify(payload),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail ?? `HTTP ${response.status}`);
  return body;
}

function showSteps() {
  const flow = flows.get($("#flow").value);
  $("#flow-steps").textContent = flow ? `steps: ${flow.steps.join(" \u2192 ")}` : "";
}

$("#flow").addEventListener("change", showSteps);

$("#run-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("#form-error");
  error.textContent = "";
  let input;
  try {
    input = JSON.parse($("#input").value || "{}");
  } catch (problem) {
    error.textContent = `the input is not JSON: ${problem.message}`;
    return;
  }
  const request = { flow: $("#flow").value, input, pace: Number($("#pace").value) / 1000 };
  try {
    const started = await call("start", request);
    const run = runElement(started.run);
    $(".title", run).textContent = `${started.flow} on ${started.node}`;
    $(".meta", run).textContent = `run ${started.run} · started ${new Date().toLocaleTimeString()}`;
    fillSteps(run, started.steps);
    follow(started);
  } catch (problem) {
    error.textContent = problem.message;
  }
});

/** Subscribe to a run's channel from its `started` publication on, until it ends. */
function follow(started) {
  const run = runs.get(started.run);
  const subscription = conn.subscribe(`flow-run:${started.run}`, {
    recover: true,
    since: { offset: started.offset, epoch: started.epoch },
    onMessage(message, { recovered }) {
      events.push([started.run, message.event, message.index ?? null, recovered]);
      progress(run, message);
      if (run.dataset.state !== "running") subscription.unsubscribe().catch(() => {});
    },
    onSubscribed(info) {
      events.push([started.run, "subscribed", info.resubscribed, info.recovered, info.publications]);
      if (!info.recovered) {
        reload(run, started.run, info.reason).then(() => {
          if (run.dataset.state !== "running") subscription.unsubscribe().catch(() => {});
        });
      } else if (run.dataset.state === "running") {
        $(".status", run).textContent = "running";
      }
    },
    onError(error) {
      // a resubscription the gateway could not serve yet: the client tries again
      if (run.dataset.state === "running") $(".status", run).textContent = `retrying: ${error.message}`;
    },
  });
  subscription.ready.catch((error) => finishRun(run, "unknown", `cannot follow this run: ${error.message}`));
}

/**
 * What the run's channel missed cannot be told (its history was started again or is gone):
 * show the run as the flows service recorded it; live publications follow.
 */
async function reload(run, id, reason) {
  $(".status", run).textContent = `reloading (${reason || "no history"})\u2026`;
  try {
    const state = await call("run_state", id);
    fillSteps(run, state.steps);
    for (const step of state.done) progress(run, { event: "step", ...step });
    if (state.state === "done") progress(run, { event: "done", output: state.output });
    else if (state.state === "failed") progress(run, { event: "failed", error: state.error });
    else $(".status", run).textContent = "running";
  } catch (problem) {
    finishRun(run, "unknown", `its progress was lost and could not be reloaded: ${problem.message}`);
  }
}

function runElement(id) {
  let run = runs.get(id);
  if (run) return run;
  run = document.createElement("li");
  run.className = "run";
  run.dataset.run = id;
  run.dataset.state = "running";
  run.innerHTML =
    '<header><h3 class="title"></h3><span class="meta muted"></span><span class="status">running</span></header>' +
    '<ol class="steps"></ol><pre class="output" hidden></pre>';
  runs.set(id, run);
  $("#no-runs").hidden = true;
  $("#runs").prepend(run);
  return run;
}

function fillSteps(run, steps) {
  const list = $(".steps", run);
  steps.forEach((connector, index) => {
    if (list.children[index]) return;
    const step = document.createElement("li");
    step.className = "step";
    step.dataset.state = index === 0 ? "running" : "pending";
    step.innerHTML = '<span class="connector"></span><span class="node"></span><span class="ms"></span>';
    $(".connector", step).textContent = connector;
    list.append(step);
  });
}

/** Show one event of a run: a step is drawn at its index, so a step shown again stays one. */
function progress(run, message) {
  if (run.dataset.state !== "running") return;
  if (message.event === "step") {
    const list = $(".steps", run);
    const names = Array.from(list.children, (step) => $(".connector", step).textContent);
    while (names.length <= message.index) names.push(message.connector);
    fillSteps(run, names);
    const step = list.children[message.index];
    step.dataset.state = "done";
    $(".connector", step).textContent = message.connector;
    $(".node", step).textContent = message.node;
    $(".ms", step).textContent = `${message.ms.toFixed(1)} ms`;
    const next = list.children[message.index + 1];
    if (next && next.dataset.state === "pending") next.dataset.state = "running";
    showOutput(run, message.output);
  } else if (message.event === "done") {
    showOutput(run, message.output);
    finishRun(run, "done", "done");
  } else if (message.event === "failed") {
    finishRun(run, "failed", message.error);
  }
}

function showOutput(run, output) {
  const pre = $(".output", run);
  pre.hidden = false;
  pre.textContent = JSON.stringify(output, null, 2);
}

function finishRun(run, state, text) {
  run.dataset.state = state;
  $(".status", run).textContent = text;
  for (const step of run.querySelectorAll('.step[data-state="running"]')) {
    step.dataset.state = state === "done" ? "done" : "pending";
  }
}
