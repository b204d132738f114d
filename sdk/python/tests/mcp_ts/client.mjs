// The TypeScript MCP SDK's client against an MCP server whose authorization
// server is Tessera (issue 21), run by tests/test_mcp_typescript.py.
//
// It calls one tool through each of the SDK's headless OAuth providers:
//   - `svid`: client_credentials with a JWT-SVID of the dev issuer as the
//     client assertion (StaticPrivateKeyJwtProvider: workload identity
//     federation);
//   - `signed`: client_credentials with private_key_jwt signed by the SDK
//     with the client's registered key (PrivateKeyJwtProvider);
//   - `bearer`: the RFC 7523 jwt-bearer grant with a JWT-SVID, no client
//     authentication (the SDK has no provider for it; its OAuthClientProvider
//     contract takes any grant through prepareTokenRequest).
// Each discovers the authorization server from the MCP server's RFC 9728
// metadata, reads its RFC 8414 metadata and asks for a token; the only
// thing added to the SDK's request is the task (RFC 9396
// `authorization_details` of type `tessera_task`).
//
// Input (environment): MCP_SDK_DIR (where `npm ci` installed the SDK),
// MCP_URL, ISSUER, TASK_ID, SCOPE, CALLS (a JSON list of {tool, arguments}),
// PROVIDERS (the names below to use, comma-separated), SVID_CLIENT, SVID and
// SVID_BEARER (two JWT-SVIDs for the token endpoint: each is used once),
// SIGNER_CLIENT, SIGNER_PEM (PKCS#8). The dev CA comes in through
// NODE_EXTRA_CA_CERTS. Each call runs with a fresh provider (so a fresh
// token). Output: one JSON line per provider and call, {"provider", "tool",
// "ok", "text"} or {..., "ok": false, "error"}, with the status and URL of
// every request it made, so the test can check the discovery and who
// refused. Never a token.

import { join } from "node:path";
import { pathToFileURL } from "node:url";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const sdk = async (path) =>
  import(pathToFileURL(join(env("MCP_SDK_DIR"), "node_modules/@modelcontextprotocol/sdk/dist/esm", path)).href);

const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
const { PrivateKeyJwtProvider, StaticPrivateKeyJwtProvider } = await sdk("client/auth-extensions.js");

const taskDetails = JSON.stringify([{ type: "tessera_task", task_id: env("TASK_ID") }]);

// The SDK's providers send grant_type and scope; Tessera also needs the task.
const forTask = (Provider) =>
  class extends Provider {
    prepareTokenRequest(scope) {
      const params = super.prepareTokenRequest(scope);
      params.set("authorization_details", taskDetails);
      return params;
    }
  };

const requested = [];
const recordingFetch = async (url, init) => {
  const response = await fetch(url, init);
  requested.push({ url: String(url), status: response.status });
  return response;
};

// jwt-bearer: the assertion is the grant; the agent sends no client
// authentication (RFC 7523 section 3.1 allows it).
class JwtBearerProvider extends StaticPrivateKeyJwtProvider {
  constructor(options) {
    super({ ...options, jwtBearerAssertion: options.assertion });
    this.assertion = options.assertion;
    this.addClientAuthentication = async () => {};
  }

  prepareTokenRequest(scope) {
    const params = new URLSearchParams({
      grant_type: "urn:ietf:params:oauth:grant-type:jwt-bearer",
      assertion: this.assertion,
    });
    if (scope) params.set("scope", scope);
    return params;
  }
}

const providers = {
  svid: () =>
    new (forTask(StaticPrivateKeyJwtProvider))({
      clientId: env("SVID_CLIENT"),
      jwtBearerAssertion: env("SVID"),
      scope: env("SCOPE"),
      expectedIssuer: env("ISSUER"),
    }),
  signed: () =>
    new (forTask(PrivateKeyJwtProvider))({
      clientId: env("SIGNER_CLIENT"),
      privateKey: env("SIGNER_PEM"),
      algorithm: "ES256",
      scope: env("SCOPE"),
      expectedIssuer: env("ISSUER"),
    }),
  bearer: () =>
    new (forTask(JwtBearerProvider))({
      clientId: env("SVID_CLIENT"),
      assertion: env("SVID_BEARER"),
      scope: env("SCOPE"),
      expectedIssuer: env("ISSUER"),
    }),
};

const calls = JSON.parse(env("CALLS"));
for (const name of env("PROVIDERS").split(",")) {
  const make = providers[name];
  if (!make) throw new Error(`no provider ${name}`);
  for (const { tool, arguments: args } of calls) {
    requested.length = 0;
    const client = new Client({ name: "tessera-ts-test", version: "1.0.0" });
    const transport = new StreamableHTTPClientTransport(new URL(env("MCP_URL")), {
      authProvider: make(),
      fetch: recordingFetch,
    });
    let line;
    try {
      await client.connect(transport);
      const result = await client.callTool({ name: tool, arguments: args });
      const text = (result.content ?? []).map((block) => block.text ?? "").join(" ");
      line = { provider: name, tool, ok: !result.isError, text };
    } catch (err) {
      line = { provider: name, tool, ok: false, error: String(err?.message ?? err) };
    } finally {
      await client.close().catch(() => {});
    }
    line.requested = requested.map(({ url, status }) => `${status} ${url}`);
    process.stdout.write(`${JSON.stringify(line)}\n`);
  }
}
