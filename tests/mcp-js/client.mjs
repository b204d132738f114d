// The TypeScript MCP SDK's client (plain ESM, no compile step) against an MCP
// server protected by Tessera, driven by tests/e2e/mcp_layer.rs. It discovers
// the authorization server from the server's RFC 9728 metadata (the SDK reads
// `resource_metadata` from the 401), gets a token with client_credentials and
// private_key_jwt (the SDK's PrivateKeyJwtProvider, plus the task Tessera
// needs), calls a tool, is refused a tool outside its scope, then, told on
// stdin that the task was completed, calls until it is refused.
//
// Environment: MCP_JS_DIR (where package.json's dependencies are installed),
// MCP_URL, ISSUER (the broker's tokens.issuer), CLIENT_ID, CLIENT_KEY (a
// PKCS#8 PEM file), TASK_ID, SCOPE. Prints one line per step for the test.

import { webcrypto } from "node:crypto";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
// Debian's node 18 has no global Web Crypto; the SDK signs with it.
globalThis.crypto ??= webcrypto;

const sdk = (path) =>
  import(pathToFileURL(`${env("MCP_JS_DIR")}/node_modules/@modelcontextprotocol/sdk/dist/esm/${path}`).href);

const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
const { PrivateKeyJwtProvider } = await sdk("client/auth-extensions.js");

// Tessera mints a token only for a task: name it in the token request.
class TaskProvider extends PrivateKeyJwtProvider {
  constructor(options, taskId) {
    super(options);
    this.taskId = taskId;
  }

  prepareTokenRequest(scope) {
    const params = super.prepareTokenRequest(scope);
    params.set("task_id", this.taskId);
    return params;
  }
}

const provider = new TaskProvider(
  {
    clientId: env("CLIENT_ID"),
    privateKey: readFileSync(env("CLIENT_KEY"), "utf8"),
    algorithm: "ES256",
    scope: env("SCOPE"),
    expectedIssuer: env("ISSUER"),
  },
  env("TASK_ID"),
);
const client = new Client({ name: "tessera-mcp-js-test", version: "1.0.0" });
await client.connect(new StreamableHTTPClientTransport(new URL(env("MCP_URL")), { authProvider: provider }));

const text = (result) => (result.content ?? []).map((c) => c.text ?? "").join(" ");
const tools = await client.listTools();
console.log(`TOOLS ${tools.tools.map((t) => t.name).join(",")}`);
console.log(`CALLED ${text(await client.callTool({ name: "crm.read", arguments: {} }))}`);
try {
  const result = await client.callTool({ name: "payments.refund", arguments: { amount: 40 } });
  console.log(`REFUND_SERVED ${text(result)}`);
} catch (error) {
  console.log(`REFUND_REFUSED ${String(error?.message ?? error).split("\n")[0]}`);
}

// Wait for the test to complete the task, then call until refused.
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (line.trim() === "completed") break;
}
const deadline = Date.now() + 20_000;
for (;;) {
  try {
    await client.callTool({ name: "crm.read", arguments: {} });
  } catch (error) {
    console.log(`REVOKED ${String(error?.message ?? error).split("\n")[0]}`);
    break;
  }
  if (Date.now() > deadline) {
    console.log("STILL_SERVED");
    break;
  }
  await new Promise((resolve) => setTimeout(resolve, 100));
}
await client.close();
// Stdin and the SDK's connections would keep the event loop alive.
process.exit(0);
