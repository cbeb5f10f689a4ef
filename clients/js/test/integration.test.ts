// The SDK against a live msgd (embedded mode): idempotent retried sends, live
// delivery, resume without gap or duplicate after a dropped socket and after
// msgd is SIGKILLed and restarted, history and thread cursors, edits,
// deletes, reactions, receipts, typing, batches and attachments.
import assert from "node:assert/strict";
import { webcrypto } from "node:crypto";
import { existsSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { WebSocket } from "ws";

import { MsgdClient, MsgdError, type Envelope, type FetchLike, type LiveClient } from "../dist/index.js";
import { until } from "./fakes.js";
import { freePort, msgdBinary, startMsgd, type Msgd } from "./msgd.js";

const binary = msgdBinary();
const missing = existsSync(binary) ? false : `no msgd binary at ${binary} (set MSGD_BIN)`;

/**
 * The test's WebSocket: the ws package's, which the test can block (new
 * sockets then dial a closed port and fail, as during an outage) and whose
 * live sockets it can cut.
 */
class TestSocket extends WebSocket {
  static closedPort = 0;
  static blocked = false;
  static all: TestSocket[] = [];

  constructor(url: string) {
    super(TestSocket.blocked ? `ws://127.0.0.1:${TestSocket.closedPort}/v1/ws` : url);
    TestSocket.all.push(this);
  }
}

interface User {
  msgd: MsgdClient;
  live: LiveClient;
  /** Every message, message.updated and message.deleted event, in order of arrival. */
  events: Envelope[];
}

describe("against a live msgd", { skip: missing }, () => {
  let server: Msgd;
  let admin: MsgdClient;
  let alice: User;
  let bob: User;
  let conv: string;
  const tokens = new Map<string, string>();

  function user(userId: string, fetch?: FetchLike): User {
    const msgd = new MsgdClient({
      baseUrl: server.baseUrl,
      apiKey: server.readKey,
      accessToken: () => token(userId),
      fetch,
      WebSocket: TestSocket,
      crypto: webcrypto,
      retry: { baseDelayMs: 50, maxDelayMs: 400 },
      live: { reconnect: { baseDelayMs: 50, maxDelayMs: 400 } },
    });
    const events: Envelope[] = [];
    for (const op of ["message", "message.updated", "message.deleted"] as const) {
      msgd.live.on(op, (message) => events.push(message));
    }
    return { msgd, live: msgd.live, events };
  }

  async function token(userId: string): Promise<string> {
    if (!tokens.has(userId)) tokens.set(userId, (await admin.devToken(userId)).access_token);
    return tokens.get(userId)!;
  }

  async function subscribed(who: User): Promise<void> {
    const done = new Promise<void>((resolve) => {
      const off = who.live.on("subscribed", () => {
        off();
        resolve();
      });
    });
    who.live.subscribe(conv);
    await done;
  }

  async function lastSeq(): Promise<number> {
    return (await alice.msgd.getReceipts(conv)).last_seq;
  }

  /** Bob saw every seq from 1 to the conversation's last, each once, in order. */
  async function assertBobHasEverything(): Promise<void> {
    const last = await lastSeq();
    await until(() => bob.live.lastSeq(conv) === last, `bob to reach seq ${last}`, 15_000);
    const seqs = bob.events.map((event) => event.seq);
    assert.deepEqual(
      seqs,
      Array.from({ length: last }, (_, i) => i + 1),
    );
  }

  before(async () => {
    server = await startMsgd(binary);
    TestSocket.closedPort = await freePort();
    admin = new MsgdClient({ baseUrl: server.baseUrl, apiKey: server.adminKey });
    alice = user("alice");
    bob = user("bob");
    conv = (await admin.createConversation({ title: "sdk", members: ["alice", "bob"] })).id;
    await Promise.all([subscribed(alice), subscribed(bob)]);
  });

  after(async () => {
    alice?.live.close();
    bob?.live.close();
    await server?.stop();
  });

  /** A test that shows msgd's log when it fails. */
  function step(name: string, body: () => Promise<void>): void {
    it(name, async () => {
      try {
        await body();
      } catch (error) {
        console.error(`msgd's log:\n${server.log().slice(-8_000)}`);
        throw error;
      }
    });
  }

  step("stores one message when a send is retried after its answer was lost", async () => {
    const bodies: string[] = [];
    const loseFirstAnswer: FetchLike = async (url, init) => {
      const response = await fetch(url, init);
      if (init.method === "POST") bodies.push(init.body as string);
      if (bodies.length === 1) throw new TypeError("fetch failed: the connection dropped");
      return response;
    };
    const flaky = user("alice", loseFirstAnswer);
    const message = await flaky.msgd.sendMessage(conv, { payload: { text: "once" } });
    assert.equal(bodies.length, 2);
    assert.equal(bodies[1], bodies[0], "the retry sent the same body");
    assert.equal(message.seq, 1);
    const again = await alice.msgd.sendMessage(conv, {
      payload: { text: "once" },
      client_msg_id: message.client_msg_id,
    });
    assert.equal(again.id, message.id, "a replay answers the original");
    assert.equal(await lastSeq(), 1);
  });

  step("delivers live to subscribers", async () => {
    for (const text of ["two", "three", "four"]) await alice.msgd.sendMessage(conv, { payload: { text } });
    await until(() => bob.events.length === 4, "bob's four messages");
    assert.deepEqual(
      bob.events.map((m) => m.payload),
      [{ text: "once" }, { text: "two" }, { text: "three" }, { text: "four" }],
    );
  });

  step("publishes edits, deletes and reactions", async () => {
    const reactions: string[] = [];
    alice.live.on("reaction", (r) => reactions.push(`${r.user_id} ${r.action} ${r.reaction} on ${r.seq}: ${r.count}`));
    const edited = await alice.msgd.editMessage(conv, 2, { payload: { text: "two, edited" } });
    assert.ok(edited.edited_at);
    await alice.msgd.deleteMessage(conv, 3);
    await alice.msgd.deleteMessage(conv, 3); // deleting again succeeds
    const change = await bob.msgd.addReaction(conv, 1, "👍");
    assert.deepEqual(change, { seq: 1, reaction: "👍", changed: true, count: 1 });
    await until(() => bob.events.length === 6 && reactions.length === 1, "the edit, delete and reaction events");
    const [update, deletion] = bob.events.slice(4);
    assert.equal(update!.kind, "edit");
    assert.equal(update!.target_seq, 2);
    assert.deepEqual(update!.payload, { text: "two, edited" });
    assert.equal(deletion!.kind, "delete");
    assert.equal(deletion!.target_seq, 3);
    assert.deepEqual(reactions, ["bob added 👍 on 1: 1"]);
    assert.equal((await bob.msgd.getMessage(conv, 3)).deleted, true);
    assert.deepEqual((await bob.msgd.getMessage(conv, 1)).reactions, [{ reaction: "👍", count: 1, mine: true }]);
    await bob.msgd.removeReaction(conv, 1, "👍");
  });

  step("refuses what a user may not do with the server's error code", async () => {
    const error = await bob.msgd.editMessage(conv, 1, { payload: "not mine" }).catch((e: unknown) => e);
    assert.ok(error instanceof MsgdError);
    assert.equal(error.status, 403);
    assert.equal(error.code, "not_sender");
    const stranger = user("mallory");
    const refused = await stranger.msgd.getConversation(conv).catch((e: unknown) => e);
    assert.equal((refused as MsgdError).code, "not_member");
  });

  step("carries receipts and typing both ways", async () => {
    const receipts: string[] = [];
    const typing: string[] = [];
    alice.live.on("receipt", (r) => receipts.push(`${r.user_id} read ${r.read_seq}`));
    alice.live.on("typing", (t) => typing.push(t.user_id));
    const last = await lastSeq();
    assert.equal(bob.live.receipt(conv, last, "read"), true);
    assert.equal(bob.live.typing(conv), true);
    await until(() => receipts.length === 1 && typing.length === 1, "bob's receipt and typing");
    assert.deepEqual(receipts, [`bob read ${last}`]);
    assert.deepEqual(typing, ["bob"]);
    const marks = await alice.msgd.postReceipt(conv, { seq: 2, kind: "delivered" });
    assert.equal(marks.delivered_seq, 2);
    const all = await bob.msgd.getReceipts(conv);
    assert.equal(all.unread, 0);
    assert.equal(all.receipts.find((m) => m.user_id === "bob")?.read_seq, last);
  });

  step("resumes after a dropped socket with no gap and no duplicate", async () => {
    const reconnects = count(bob.live, "reconnecting");
    TestSocket.blocked = true;
    const dropped = once(bob.live, "close");
    TestSocket.all.filter((s) => s.readyState === WebSocket.OPEN).forEach((s) => s.terminate());
    await dropped;
    for (const text of ["while away 1", "while away 2", "while away 3"]) {
      await alice.msgd.sendMessage(conv, { payload: { text } });
    }
    await alice.msgd.editMessage(conv, 4, { payload: { text: "four, edited while away" } });
    await until(() => reconnects() >= 2, "failed reconnects while blocked");
    TestSocket.blocked = false;
    await assertBobHasEverything();
  });

  step("resumes after msgd is SIGKILLed and restarted, with no gap and no duplicate", async () => {
    TestSocket.blocked = true;
    const dropped = once(bob.live, "close");
    await server.kill();
    await dropped;
    await server.start();
    await alice.msgd.sendMessage(conv, { payload: { text: "after restart" } });
    await alice.msgd.sendBatch(conv, [{ payload: { text: "batch 1" } }, { payload: { text: "batch 2" } }]);
    TestSocket.blocked = false;
    await assertBobHasEverything();
  });

  step("iterates history and threads over cursors", async () => {
    const last = await lastSeq();
    const ascending: number[] = [];
    for await (const message of bob.msgd.history(conv, { limit: 2 })) ascending.push(message.seq);
    assert.deepEqual(
      ascending,
      Array.from({ length: last }, (_, i) => i + 1),
    );
    const newest: Envelope[] = [];
    for await (const message of bob.msgd.history(conv, { order: "desc", limit: 3 })) {
      newest.push(message);
      if (newest.length === 5) break;
    }
    assert.deepEqual(
      newest.map((m) => m.seq),
      [last, last - 1, last - 2, last - 3, last - 4],
    );

    for (const text of ["reply 1", "reply 2", "reply 3"])
      await bob.msgd.sendMessage(conv, { payload: { text }, reply_to: 1 });
    const replies: unknown[] = [];
    for await (const reply of alice.msgd.thread(conv, 1, { limit: 2 })) replies.push(reply.payload);
    assert.deepEqual(replies, [{ text: "reply 1" }, { text: "reply 2" }, { text: "reply 3" }]);
    assert.equal((await alice.msgd.threadPage(conv, 1)).parent.reply_count, 3);
    await assertBobHasEverything();
  });

  step("uploads an attachment, sends it, and downloads the same bytes", async () => {
    const bytes = new TextEncoder().encode("the attachment's bytes");
    const upload = await alice.msgd.uploadAttachment(conv, bytes, { contentType: "text/plain", filename: "note.txt" });
    const message = await alice.msgd.sendMessage(conv, {
      payload: { text: "see file" },
      attachments: [upload.attachment],
    });
    assert.deepEqual(message.attachments, [upload.attachment]);
    const download = await bob.msgd.downloadAttachment(conv, upload.id);
    assert.deepEqual(new Uint8Array(await download.arrayBuffer()), bytes);
    assert.match(download.headers.get("content-disposition") ?? "", /note\.txt/);
    await assertBobHasEverything();
  });
});

function once(live: LiveClient, event: "close"): Promise<void> {
  return new Promise((resolve) => {
    const off = live.on(event, () => {
      off();
      resolve();
    });
  });
}

/** How many times `event` has fired since this call. */
function count(live: LiveClient, event: "reconnecting"): () => number {
  let n = 0;
  live.on(event, () => n++);
  return () => n;
}
