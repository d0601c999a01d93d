// Reads an AsyncAPI document with the official parser (@asyncapi/parser) and prints, as
// JSON, what it made of it: its diagnostics (errors and warnings of the spec's rules) and
// the channels, messages and operations of the parsed model.
//   node asyncapi_parse.cjs <node_modules dir> <document file>
const path = require("path");
const fs = require("fs");

async function main() {
  const [modules, file] = process.argv.slice(2);
  const { Parser } = require(path.join(modules, "@asyncapi/parser"));
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(fs.readFileSync(file, "utf8"));
  const severities = ["error", "warning", "info", "hint"];
  const out = {
    diagnostics: diagnostics.map((d) => ({
      severity: severities[d.severity] ?? String(d.severity),
      code: String(d.code),
      message: d.message,
      path: d.path.join("/"),
    })),
    parsed: document !== undefined,
  };
  if (document !== undefined) {
    out.version = document.version();
    out.servers = Object.fromEntries(
      document.servers().all().map((s) => [s.id(), { host: s.host(), protocol: s.protocol() }])
    );
    out.channels = Object.fromEntries(
      document.channels().all().map((c) => [
        c.id(),
        {
          address: c.address(),
          messages: c.messages().all().map((m) => m.id()),
          bindings: c.bindings().all().map((b) => b.protocol()),
        },
      ])
    );
    out.messages = Object.fromEntries(
      document.components().messages().all().map((m) => [
        m.id(),
        {
          name: m.name(),
          payloadId: m.hasPayload() ? m.payload().id() : null,
          payloadType: m.hasPayload() ? m.payload().type() ?? null : null,
          headers: m.hasHeaders() ? Object.keys(m.headers().properties() ?? {}) : [],
        },
      ])
    );
    out.operations = Object.fromEntries(
      document.operations().all().map((o) => [
        o.id(),
        {
          action: o.action(),
          channels: o.channels().all().map((c) => c.id()),
          messages: o.messages().all().map((m) => m.id()),
        },
      ])
    );
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + "\n");
  process.exit(1);
});
