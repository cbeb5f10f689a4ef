// The SDK covers the whole OpenAPI document: every (method, path) maps to a
// MsgdClient member, or is listed as not for clients with a reason.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { it } from "node:test";

import { LiveClient, MsgdClient, OPERATIONS, type OperationEntry } from "../dist/index.js";

const DOCUMENT = new URL("../../../src/http/openapi.json", import.meta.url);
const METHODS = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

interface Operation {
  operationId: string;
  method: string;
  path: string;
}

function documentOperations(): Operation[] {
  const document = JSON.parse(readFileSync(DOCUMENT, "utf8")) as { paths: Record<string, Record<string, unknown>> };
  return Object.entries(document.paths).flatMap(([path, item]) =>
    Object.entries(item)
      .filter(([method]) => METHODS.includes(method))
      .map(([method, operation]) => ({
        operationId: (operation as { operationId: string }).operationId,
        method: method.toUpperCase(),
        path,
      })),
  );
}

const table = OPERATIONS as Record<string, OperationEntry>;
const client = new MsgdClient({ baseUrl: "http://x", apiKey: "k", fetch: async () => new Response() });

it("maps every operation of openapi.json to an SDK method or a reason", () => {
  const operations = documentOperations();
  assert.ok(operations.length > 20, "the document was read");
  for (const { operationId, method, path } of operations) {
    const entry = table[operationId];
    assert.ok(entry, `${method} ${path} (${operationId}) has no entry in OPERATIONS: add an SDK method`);
    assert.equal(`${entry.method} ${entry.path}`, `${method} ${path}`, `OPERATIONS.${operationId}`);
    if ("notForClients" in entry) {
      assert.ok(entry.notForClients.length > 10, `${operationId}: say why it is not for clients`);
    } else if (entry.sdk === "live") {
      assert.ok(client.live instanceof LiveClient);
    } else {
      assert.equal(typeof client[entry.sdk], "function", `MsgdClient.${entry.sdk} for ${operationId}`);
    }
  }
});

it("has no entry for an operation the document no longer has", () => {
  const ids = new Set(documentOperations().map((operation) => operation.operationId));
  assert.deepEqual(
    Object.keys(table).filter((id) => !ids.has(id)),
    [],
  );
});
