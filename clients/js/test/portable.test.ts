// The built package runs in browsers as well as Node: it imports nothing but
// its own modules and touches none of Node's globals.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { it } from "node:test";

const DIST = new URL("../dist/", import.meta.url).pathname;

function builtModules(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return builtModules(path);
    return entry.name.endsWith(".js") ? [path] : [];
  });
}

it("imports only its own modules and uses no Node-only globals", () => {
  const modules = builtModules(DIST);
  assert.ok(modules.length > 5, "dist/ was built");
  for (const path of modules) {
    const code = readFileSync(path, "utf8");
    for (const [, specifier] of code.matchAll(/\bfrom\s+"([^"]+)"/g)) {
      assert.match(specifier!, /^\.\.?\//, `${path} imports ${specifier}`);
    }
    assert.doesNotMatch(code, /\b(process|Buffer|require|__dirname)\b/, `${path} uses a Node-only global`);
  }
});
