// The ipaas demo page: one WebSocket to a node of the `flows` service, through the gateway.
//
// Frames are JSON in binary frames. Requests travel in the client's request/reply envelope:
//   {"op": "hello"}                                  -> {"node": ..., "flows": [{name, steps}]}
//   {"op": "run", "flow", "input", "pace"}           -> {"run": id, "flow", "steps", "node"}
// then the node pushes the run's progress as ordinary frames:
//   {"event": "step", "run", "index", "connector", "node", "ms", "output"}
//   {"event": "done", "run", "output"}  or  {"event": "failed", "run", "error"}
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

const conn = connect({
  service: "flows",
  token,
  backoff: { initial: 250, max: 5000 },
  onStateChange: showState,
  onOpen: hello,
  onFrame: (frame) => progress(fromJson(frame)),
  onClose: (info) => {
    for (const run of runs.values()) {
      if (run.dataset.state === "running") finishRun(run, "failed", "the connection was lost");
    }
    if (!info.reconnect) showClosed(info);
  },
});
globalThis.demo = { conn, flows, runs };

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
  const request = { op: "run", flow: $("#flow").value, input, pace: Number($("#pace").value) / 1000 };
  try {
    const started = fromJson(await conn.request(toJson(request), { timeout: 5000 }));
    const run = runElement(started.run);
    $(".title", run).textContent = `${started.flow} on ${started.node}`;
    $(".meta", run).textContent = `run ${started.run} · started ${new Date().toLocaleTimeString()}`;
    fillSteps(run, started.steps);
  } catch (problem) {
    error.textContent = problem.message;
  }
});

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

function progress(message) {
  const run = runElement(message.run);
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
    if (next) next.dataset.state = "running";
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
