// Validate an AsyncAPI document with the AsyncAPI project's own parser.
//
//   node validate.mjs < document.json
//
// Prints one JSON object on stdout:
//   {"valid": bool, "version": "3.0.0",
//    "diagnostics": [{"severity": "error"|"warning"|"information"|"hint",
//                     "code": ..., "message": ..., "path": "a.b.c"}],
//    "channels": {"<id>": "<address>"},
//    "operations": {"<id>": {"action": "send"|"receive", "channel": "<id>",
//                            "messages": ["<id>", ...]}}}
// "valid" is false when the parser found an error (a warning does not count). The
// channels and operations are read back from the parser's model, so that a test can
// check the parser understood the document as it was meant. Exit status: 0 when the
// document was read (valid or not), 2 when stdin was not JSON or the parser crashed.
import { Parser } from "@asyncapi/parser";

const SEVERITY = ["error", "warning", "information", "hint"];

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

function summary(document) {
  const channels = {};
  for (const channel of document.channels().all()) channels[channel.id()] = channel.address();
  const operations = {};
  for (const operation of document.operations().all()) {
    operations[operation.id()] = {
      action: operation.action(),
      channel: operation.channels().all().map((c) => c.id())[0] ?? null,
      messages: operation.messages().all().map((m) => m.id()),
    };
  }
  return { version: document.version(), channels, operations };
}

try {
  const text = await readStdin();
  JSON.parse(text); // a clear error for a body that is not JSON at all
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(text);
  const shown = diagnostics.map((d) => ({
    severity: SEVERITY[d.severity] ?? String(d.severity),
    code: d.code,
    message: d.message,
    path: (d.path || []).join("."),
  }));
  const valid = document !== undefined && !shown.some((d) => d.severity === "error");
  const out = { valid, diagnostics: shown, ...(document ? summary(document) : {}) };
  process.stdout.write(JSON.stringify(out) + "\n");
} catch (error) {
  process.stderr.write(`validate.mjs: ${error && error.stack ? error.stack : error}\n`);
  process.exit(2);
}
