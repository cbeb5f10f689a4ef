// The demo chat page (/demo) in headless Chromium, driven by puppeteer-core:
// alice and bob, each in their own incognito browser context, log in, alice
// creates a conversation with bob, they chat (live messages in order,
// typing, read receipts), bob drops off the network and comes back to exactly
// what he missed, then edits, deletes, an idempotent send retried across
// alice's own outage, a reload (sessionStorage) and "load older".
//
// Run by scripts/demo-test.sh, which starts msgd and passes:
//   DEMO_BASE_URL   where the browser opens /demo (msgd itself, or the dev proxy)
//   MSGD_URL        msgd, for seeding messages over HTTP (default DEMO_BASE_URL)
//   WRITE_KEY       a write key of the app
//   ALICE_TOKEN, BOB_TOKEN   dev tokens for the users alice and bob
//   DEMO_ARTIFACTS  where screenshots go (default /tmp/msgd-demo-artifacts)
//   CHROMIUM        the browser (default /usr/bin/chromium)
//
// Prints one line per step and closes with "demo: N passed, N failed"; exits
// non-zero on the first failure (after screenshots of both pages).
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import puppeteer from "puppeteer-core";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    console.error(`demo test: ${name} is not set (run scripts/demo-test.sh)`);
    process.exit(2);
  }
  return value;
};
const BASE = env("DEMO_BASE_URL").replace(/\/$/, "");
const MSGD = env("MSGD_URL", BASE).replace(/\/$/, "");
const WRITE_KEY = env("WRITE_KEY");
const TOKENS = { alice: env("ALICE_TOKEN"), bob: env("BOB_TOKEN") };
const ARTIFACTS = env("DEMO_ARTIFACTS", "/tmp/msgd-demo-artifacts");
const CHROMIUM = env("CHROMIUM", "/usr/bin/chromium");
const TIMEOUT = 10_000;

mkdirSync(ARTIFACTS, { recursive: true });

// ---------------------------------------------------------------------------
// Steps: each prints ok/FAIL; the first failure stops the run.
// ---------------------------------------------------------------------------
let passed = 0;
let shot = 0;
const pages = {};
const problems = []; // page errors and CSP violations, from either page

async function step(name, fn) {
  const started = Date.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok ${passed} - ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    console.log(`not ok ${passed + 1} - ${name}`);
    console.log(String(error && error.stack ? error.stack : error).replace(/^/gm, "    "));
    await screenshots(`FAILED-${name}`).catch(() => {});
    console.log(`demo: ${passed} passed, 1 failed`);
    console.log(`artifacts: ${ARTIFACTS}`);
    await browser?.close().catch(() => {});
    process.exit(1);
  }
}

async function screenshots(label) {
  shot += 1;
  const slug = label.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 60);
  for (const [who, page] of Object.entries(pages)) {
    await page.screenshot({ path: join(ARTIFACTS, `${String(shot).padStart(2, "0")}-${slug}-${who}.png`) });
  }
}

// ---------------------------------------------------------------------------
// Page helpers
// ---------------------------------------------------------------------------
const sel = (testid) => `[data-testid="${testid}"]`;

function text(page, testid) {
  return page.$eval(sel(testid), (node) => node.textContent);
}

/** Waits until `fn(arg)` (run in the page) is truthy; says what it waited for on timeout. */
async function until(page, what, fn, arg, timeout = TIMEOUT) {
  try {
    await page.waitForFunction(fn, { timeout, polling: 100 }, arg);
  } catch (error) {
    throw new Error(`timed out after ${timeout} ms waiting for: ${what}`, { cause: error });
  }
}

function waitStatus(page, statuses, timeout) {
  return until(
    page,
    `status in ${statuses.join("/")}`,
    (want) => want.includes(document.querySelector('[data-testid="status"]').textContent),
    statuses,
    timeout,
  );
}

/** The confirmed messages on screen: [{seq, sender, text, edited, deleted}], in DOM order. */
function messages(page) {
  return page.$$eval('[data-testid="message"]', (items) =>
    items.map((li) => ({
      seq: Number(li.dataset.seq),
      sender: li.dataset.sender,
      text: li.querySelector('[data-testid="message-text"]').textContent,
      edited: Boolean(li.querySelector('[data-testid="message-edited"]')),
      deleted: Boolean(li.querySelector('[data-testid="message-deleted"]')),
    })),
  );
}

function waitMessageCount(page, count, timeout) {
  return until(
    page,
    `${count} messages on screen`,
    (n) => document.querySelectorAll('[data-testid="message"]').length === n,
    count,
    timeout,
  );
}

async function login(page, who) {
  await page.goto(`${BASE}/demo`, { waitUntil: "load" });
  await waitStatus(page, ["offline"]);
  if (who === "alice") await page.screenshot({ path: join(ARTIFACTS, "00-login-panel.png") });
  await page.type(sel("login-api-key"), WRITE_KEY);
  // The token is long: set it at once rather than typing it key by key.
  await page.$eval(sel("login-token"), (node, token) => { node.value = token; }, TOKENS[who]);
  await page.click(sel("login-submit"));
  await waitStatus(page, ["online"]);
  assert.equal(await text(page, "whoami"), `you are ${who}`);
}

async function send(page, message) {
  await page.click(sel("composer-input"));
  await page.type(sel("composer-input"), message);
  await page.keyboard.press("Enter");
}

/** Asserts that the page shows exactly `expected` ([seq, text] pairs), in order, each once. */
async function assertMessages(page, expected) {
  const shown = await messages(page);
  assert.deepEqual(shown.map((m) => [m.seq, m.text]), expected);
  assert.equal(new Set(shown.map((m) => m.seq)).size, shown.length, "a seq shown twice");
}

async function openConversation(page, id) {
  await page.click(`[data-testid="conversation-item"][data-conversation-id="${id}"]`);
  await until(page, "the conversation open", () =>
    document.querySelector('[data-testid="conversation-title"]')?.textContent === "Team chat");
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------
const root = process.getuid?.() === 0;
const browser = await puppeteer.launch({
  executablePath: CHROMIUM,
  headless: true,
  // As root Chromium refuses to start without --no-sandbox; /dev/shm is small in containers.
  args: [...(root ? ["--no-sandbox"] : []), "--disable-dev-shm-usage", "--window-size=1100,760"],
  defaultViewport: { width: 1100, height: 760 },
});

let conversationId;

await step("alice and bob open /demo in separate incognito contexts and log in", async () => {
  for (const who of ["alice", "bob"]) {
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    page.on("pageerror", (error) => problems.push(`${who}: page error: ${error.message}`));
    page.on("console", (message) => {
      // Offline steps make failed fetches and sockets (console errors); a CSP
      // refusal or a script error never belongs there.
      if (/Content Security Policy|Uncaught/i.test(message.text())) problems.push(`${who}: ${message.text()}`);
    });
    // Each page acts as if its window had the focus (receipts are sent only
    // then), although the two share one headless browser.
    await page.emulateFocusedPage(true);
    pages[who] = page;
  }
  const response = await fetch(`${BASE}/demo`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /^text\/html/);
  assert.match(response.headers.get("content-security-policy") ?? "", /default-src 'none'/);
  await login(pages.alice, "alice");
  await login(pages.bob, "bob");
  assert.match(await text(pages.alice, "curl-hint"), /\/v1\/dev\/token/);
  await screenshots("logged in");
});

await step("alice creates a conversation with bob", async () => {
  const alice = pages.alice;
  await alice.type(sel("create-title"), "Team chat");
  await alice.type(sel("create-members"), "bob");
  await alice.click(sel("create-submit"));
  await until(alice, "the new conversation open", () =>
    document.querySelector('[data-testid="conversation-title"]')?.textContent === "Team chat");
  conversationId = await alice.$eval('[data-testid="conversation-item"].selected', (li) => li.dataset.conversationId);
  assert.match(conversationId, /^[0-9a-f-]{36}$/);
  assert.match(await text(alice, "conversation-members"), /alice \(owner\).*bob/);
});

await step("bob sees it in his list (polled) and opens it", async () => {
  await until(pages.bob, "the conversation in bob's list", (id) =>
    Boolean(document.querySelector(`[data-testid="conversation-item"][data-conversation-id="${id}"]`)),
  conversationId);
  await openConversation(pages.bob, conversationId);
  assert.equal((await messages(pages.bob)).length, 0);
  await screenshots("conversation open");
});

await step("alice sends 3 messages; bob sees them live, in order", async () => {
  for (const message of ["one", "two", "three"]) await send(pages.alice, message);
  await waitMessageCount(pages.alice, 3);
  await waitMessageCount(pages.bob, 3);
  const expected = [[1, "one"], [2, "two"], [3, "three"]];
  await assertMessages(pages.alice, expected);
  await assertMessages(pages.bob, expected);
  assert.deepEqual((await messages(pages.bob)).map((m) => m.sender), ["alice", "alice", "alice"]);
  assert.equal(await pages.alice.$$eval(sel("message-pending"), (n) => n.length), 0);
});

await step("bob types; alice sees the typing indicator", async () => {
  await pages.bob.type(sel("composer-input"), "hmm");
  await until(pages.alice, "'bob is typing' on alice's page", () =>
    /bob is typing/.test(document.querySelector('[data-testid="typing"]').textContent));
  await screenshots("bob typing");
  // It goes away by itself after 3 s.
  await until(pages.alice, "the typing line cleared", () =>
    document.querySelector('[data-testid="typing"]').textContent === "", undefined, 5_000);
  await pages.bob.$eval(sel("composer-input"), (node) => { node.value = ""; });
});

await step("bob's read receipt shows on alice's side", async () => {
  await until(pages.alice, "'Read by bob' on alice's page", () =>
    /Read by bob/.test(document.querySelector('[data-testid="receipts"]').textContent));
  // From GET .../receipts as well: a fresh look at the conversation says the same.
  const marks = await (await fetch(`${MSGD}/v1/conversations/${conversationId}/receipts`, {
    headers: { "X-Api-Key": WRITE_KEY, Authorization: `Bearer ${TOKENS.alice}` },
  })).json();
  assert.equal(marks.receipts.find((m) => m.user_id === "bob")?.read_seq, 3);
  // alice wrote the newest message: bob's page does not call that "read by alice".
  assert.doesNotMatch(await text(pages.bob, "receipts"), /alice/);
  await screenshots("read by bob");
});

await step("bob goes offline: status leaves online and stays off while reconnects fail", async () => {
  const bob = pages.bob;
  await bob.setOfflineMode(true);
  // Offline emulation may leave an open WebSocket alive: cut it as a network
  // drop would (the page also does that on the browser's offline event).
  await bob.evaluate(() => window.__msgdDemo.dropSocket());
  await waitStatus(bob, ["reconnecting", "offline"]);
  assert.notEqual(await bob.evaluate(() => window.__msgdDemo.socketState()), "open");
});

await step("alice sends 3 more while bob is offline; bob does not get them yet", async () => {
  for (const message of ["four", "five", "six"]) await send(pages.alice, message);
  await waitMessageCount(pages.alice, 6);
  // Long enough for a few reconnect attempts: all must fail.
  await new Promise((resolve) => setTimeout(resolve, 2_500));
  assert.equal((await messages(pages.bob)).length, 3);
  assert.notEqual(await text(pages.bob, "status"), "online");
  await screenshots("bob offline");
});

await step("bob comes back: online again, exactly the 6 messages in seq order, none twice", async () => {
  const bob = pages.bob;
  await bob.setOfflineMode(false);
  await waitStatus(bob, ["online"], 15_000);
  await waitMessageCount(bob, 6);
  // Give a late duplicate the chance to show up before counting.
  await new Promise((resolve) => setTimeout(resolve, 500));
  const expected = [[1, "one"], [2, "two"], [3, "three"], [4, "four"], [5, "five"], [6, "six"]];
  await assertMessages(bob, expected);
  await assertMessages(pages.alice, expected);
  const log = await bob.evaluate(() => window.__msgdDemo.statusLog);
  assert.ok(log.includes("reconnecting") || log.includes("offline"), `status log: ${log}`);
  assert.equal(log.at(-1), "online");
  await screenshots("bob back online");
});

await step("alice edits one message and deletes another; bob sees edited and deleted", async () => {
  const alice = pages.alice;
  // The message actions show on hover; clicking works all the same.
  await alice.$eval('[data-testid="message"][data-seq="1"] [data-testid="message-edit"]', (b) => b.click());
  await alice.$eval(sel("composer-input"), (node) => { node.value = ""; });
  await send(alice, "one (edited)");
  const del = '[data-testid="message"][data-seq="2"] [data-testid="message-delete"]';
  await alice.$eval(del, (b) => b.click());
  await alice.$eval(del, (b) => b.click()); // the second click confirms
  for (const page of [pages.bob, alice]) {
    await until(page, "message 1 edited and message 2 deleted", () => {
      const one = document.querySelector('[data-testid="message"][data-seq="1"]');
      const two = document.querySelector('[data-testid="message"][data-seq="2"]');
      return one?.querySelector('[data-testid="message-edited"]') && /one \(edited\)/.test(one.textContent) &&
        two?.querySelector('[data-testid="message-deleted"]') && !/two/.test(two.textContent);
    });
  }
  // The change events (seq 7 and 8) are applied, not shown as messages.
  assert.equal((await messages(pages.bob)).length, 6);
  await screenshots("edited and deleted");
});

await step("alice sends while offline: the send is retried with the same client_msg_id, stored once", async () => {
  const alice = pages.alice;
  await alice.setOfflineMode(true);
  await send(alice, "seven");
  await until(alice, "a pending message", () =>
    Boolean(document.querySelector('[data-testid="message-pending"]')));
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  await screenshots("alice sending offline");
  await alice.setOfflineMode(false);
  await until(alice, "the pending message confirmed", () =>
    !document.querySelector('[data-testid="message-pending"]'), undefined, 15_000);
  await waitStatus(alice, ["online"], 15_000);
  for (const page of [alice, pages.bob]) {
    await waitMessageCount(page, 7);
    const shown = await messages(page);
    assert.deepEqual(shown.filter((m) => m.text === "seven").map((m) => m.seq), [9]);
  }
});

await step("bob reloads: still logged in (sessionStorage), history shows the current state", async () => {
  const bob = pages.bob;
  await bob.reload({ waitUntil: "load" });
  await waitStatus(bob, ["online"]);
  await openConversation(bob, conversationId);
  await waitMessageCount(bob, 7);
  const shown = await messages(bob);
  assert.deepEqual(shown.map((m) => m.seq), [1, 2, 3, 4, 5, 6, 9]);
  assert.ok(shown[0].edited && shown[0].text === "one (edited)");
  assert.ok(shown[1].deleted && shown[1].text === "message deleted");
  const stored = await bob.evaluate(() => Object.keys(sessionStorage).sort());
  assert.deepEqual(stored, ["msgd-demo.access_token", "msgd-demo.api_key"]);
  assert.equal(await bob.evaluate(() => localStorage.length), 0);
});

await step("payloads are shown as text, never as HTML; non-text payloads as JSON", async () => {
  const post = (payload) => fetch(`${MSGD}/v1/conversations/${conversationId}/messages`, {
    method: "POST",
    headers: { "X-Api-Key": WRITE_KEY, Authorization: `Bearer ${TOKENS.alice}`, "Content-Type": "application/json" },
    body: JSON.stringify({ payload }),
  }).then((r) => assert.equal(r.status, 201));
  await post({ text: '<img src=x onerror="window.__pwned=1"><b>bold</b>' });
  await post({ kind: "location", lat: 52.5, lon: 13.4 });
  await waitMessageCount(pages.bob, 9);
  const shown = await messages(pages.bob);
  assert.equal(shown[7].text, '<img src=x onerror="window.__pwned=1"><b>bold</b>');
  assert.equal(shown[8].text, '{"kind":"location","lat":52.5,"lon":13.4}');
  assert.equal(await pages.bob.evaluate(() => window.__pwned ?? null), null);
  assert.equal(await pages.bob.$$eval('[data-testid="message-list"] img, [data-testid="message-list"] b', (n) => n.length), 0);
});

await step("a long conversation opens on its newest 50; 'load older' brings the rest", async () => {
  // Seeded over HTTP as alice (paced by the per-user rate limit).
  const headers = { "X-Api-Key": WRITE_KEY, Authorization: `Bearer ${TOKENS.alice}`, "Content-Type": "application/json" };
  const created = await fetch(`${MSGD}/v1/conversations`, {
    method: "POST", headers, body: JSON.stringify({ title: "Long one", members: ["bob"] }),
  }).then((r) => r.json());
  for (let i = 1; i <= 55; ) {
    const r = await fetch(`${MSGD}/v1/conversations/${created.id}/messages`, {
      method: "POST", headers, body: JSON.stringify({ payload: { text: `m${i}` }, client_msg_id: `seed-${i}` }),
    });
    if (r.status === 429) {
      await new Promise((resolve) => setTimeout(resolve, 1000 * Number(r.headers.get("retry-after") || 1)));
      continue;
    }
    assert.equal(r.status, 201);
    i += 1;
  }
  const bob = pages.bob;
  await bob.click(sel("refresh-conversations"));
  await until(bob, "the long conversation listed", (id) =>
    Boolean(document.querySelector(`[data-testid="conversation-item"][data-conversation-id="${id}"]`)), created.id);
  await bob.click(`[data-testid="conversation-item"][data-conversation-id="${created.id}"]`);
  await waitMessageCount(bob, 50);
  assert.equal((await messages(bob))[0].seq, 6);
  await bob.click(sel("load-older"));
  await waitMessageCount(bob, 55);
  const shown = await messages(bob);
  assert.deepEqual(shown.map((m) => m.seq), Array.from({ length: 55 }, (_, i) => i + 1));
  assert.equal(await bob.$eval(sel("load-older"), (b) => b.hidden), true);
  await screenshots("load older");
});

await step("no page errors and no CSP violations", async () => {
  assert.deepEqual(problems, []);
});

await browser.close();
console.log(`demo: ${passed} passed, 0 failed`);
console.log(`artifacts: ${ARTIFACTS}`);
