// A live msgd for the integration test: `msgd serve` in embedded mode on a
// free 127.0.0.1 port with a temp data dir, dev tokens on, and an app with an
// admin key and a publishable (read) key. Stopped by PID, also when the test
// process dies.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface Msgd {
  baseUrl: string;
  adminKey: string;
  readKey: string;
  /** Starts `msgd serve` (again) on the same port and data dir; resolves once /healthz answers. */
  start(): Promise<void>;
  /** SIGKILL: no drain, no goodbye to any socket. */
  kill(): Promise<void>;
  /** SIGTERM, then SIGKILL after 5 s; removes the data dir. */
  stop(): Promise<void>;
  log(): string;
}

/** The binary: $MSGD_BIN, else the repo's target/debug/msgd. */
export function msgdBinary(): string {
  return process.env.MSGD_BIN ?? new URL("../../../target/debug/msgd", import.meta.url).pathname;
}

export async function startMsgd(binary: string): Promise<Msgd> {
  const dir = mkdtempSync(join(tmpdir(), "msgd-sdk-"));
  const logPath = join(dir, "msgd.log");
  const env = { ...withoutMsgdVariables(process.env), ...serverVariables(dir, await freePort()) };
  const keys = await createKeys(binary, env);
  let child: ChildProcess | undefined;
  const killOnExit = () => child?.kill("SIGKILL");
  process.on("exit", killOnExit);

  const server: Msgd = {
    baseUrl: `http://${env.MSGD_HTTP__LISTEN}`,
    ...keys,
    async start() {
      const log = createWriteStream(logPath, { flags: "a" });
      await new Promise((resolve) => log.on("open", resolve));
      child = spawn(binary, ["serve"], { env, stdio: ["ignore", log, log] });
      await healthy(server.baseUrl, child, server.log);
    },
    async kill() {
      await signal(child, "SIGKILL");
    },
    async stop() {
      await signal(child, "SIGTERM", 5_000);
      process.off("exit", killOnExit);
      rmSync(dir, { recursive: true, force: true });
    },
    log: () => (existsSync(logPath) ? readFileSync(logPath, "utf8") : ""),
  };
  await server.start();
  return server;
}

/** A shell that ran scripts/services.sh may point msgd at Postgres and friends: this test wants embedded. */
function withoutMsgdVariables(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([name]) => !name.startsWith("MSGD_")));
}

function serverVariables(dir: string, port: number): Record<string, string> {
  return {
    MSGD_DATA_DIR: join(dir, "data"),
    MSGD_HTTP__LISTEN: `127.0.0.1:${port}`,
    MSGD_AUTH__DEV_TOKENS__ENABLED: "true",
    // The test sends in bursts; the default 10/s per user would only slow it down.
    MSGD_LIMITS__USER_RATE: "1000",
    MSGD_LIMITS__USER_BURST: "1000",
    MSGD_OBSERVABILITY__LOGGING__LEVEL: "warn",
  };
}

async function createKeys(binary: string, env: NodeJS.ProcessEnv): Promise<{ adminKey: string; readKey: string }> {
  const app = JSON.parse((await run(binary, ["keys", "create-app", "sdk-test", "--json"], { env })).stdout);
  const read = await run(binary, ["keys", "create", "--app", app.app_id, "--scope", "read", "--json"], { env });
  return { adminKey: app.key, readKey: JSON.parse(read.stdout).key };
}

/** A port nothing listens on (until someone binds it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

async function healthy(baseUrl: string, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`msgd exited (${child.exitCode ?? child.signalCode}):\n${log()}`);
    }
    const ok = await fetch(`${baseUrl}/healthz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`msgd did not become healthy:\n${log()}`);
}

/** Signals the process by its PID and waits for it to exit; SIGKILL after `graceMs`. */
async function signal(child: ChildProcess | undefined, name: NodeJS.Signals, graceMs = 0): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  process.kill(child.pid!, name);
  const timer = graceMs > 0 ? setTimeout(() => child.kill("SIGKILL"), graceMs) : undefined;
  await exited;
  clearTimeout(timer);
}
