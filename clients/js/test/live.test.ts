import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { MsgdClient, type AccessToken, type LiveClient, type LiveOptions } from "../dist/index.js";
import { envelope, fakeSockets, scriptedFetch, until, type FakeSocket } from "./fakes.js";

const CONV = "0190c0de-0000-7000-8000-000000000002";

interface Setup {
  live: LiveClient;
  sockets: FakeSocket[];
  /** The seqs delivered as message, message.updated and message.deleted events, in order. */
  seqs: number[];
}

function setup(options: LiveOptions = {}, accessToken: AccessToken = "tok"): Setup {
  const { WebSocket, sockets } = fakeSockets();
  const msgd = new MsgdClient({
    baseUrl: "https://msgd.test/prefix",
    apiKey: "msgd_pk_x",
    accessToken,
    fetch: scriptedFetch([]).fetch,
    WebSocket,
    live: { reconnect: { baseDelayMs: 2, maxDelayMs: 16 }, heartbeatMs: 0, ...options },
  });
  const seqs: number[] = [];
  for (const op of ["message", "message.updated", "message.deleted"] as const) {
    msgd.live.on(op, (message) => seqs.push(message.seq));
  }
  return { live: msgd.live, sockets, seqs };
}

/** Opens the newest socket and answers its subscribe as the server would. */
function openAndSubscribe(socket: FakeSocket, lastSeq: number, conversationId = CONV): void {
  socket.open();
  socket.receive({ op: "subscribed", conversation_id: conversationId, last_seq: lastSeq });
}

function messages(socket: FakeSocket, ...seqs: number[]): void {
  for (const seq of seqs) socket.receive({ op: "message", message: envelope(CONV, seq) });
}

async function nextSocket(sockets: FakeSocket[], count: number): Promise<FakeSocket> {
  await until(() => sockets.length > count, `socket #${count + 1}`);
  return sockets[count]!;
}

describe("LiveClient", () => {
  it("connects with the credentials in the query and subscribes live from now", async () => {
    const { live, sockets, seqs } = setup();
    live.subscribe(CONV);
    const socket = await nextSocket(sockets, 0);
    const url = new URL(socket.url);
    assert.equal(url.origin + url.pathname, "wss://msgd.test/prefix/v1/ws");
    assert.equal(url.searchParams.get("api_key"), "msgd_pk_x");
    assert.equal(url.searchParams.get("access_token"), "tok");
    openAndSubscribe(socket, 3);
    assert.deepEqual(socket.sent, [{ op: "subscribe", conversation_id: CONV }]);
    messages(socket, 4, 5);
    assert.deepEqual(seqs, [4, 5]);
    assert.equal(live.lastSeq(CONV), 5);
    live.close();
  });

  it("reconnects after a slow-consumer close and resumes after the last seq, dropping duplicates", async () => {
    const { live, sockets, seqs } = setup();
    const closes: number[] = [];
    live.on("close", ({ code }) => closes.push(code));
    live.subscribe(CONV, { sinceSeq: 2 });
    const first = await nextSocket(sockets, 0);
    openAndSubscribe(first, 2);
    assert.deepEqual(first.sent, [{ op: "subscribe", conversation_id: CONV, since_seq: 2 }]);
    messages(first, 3, 4, 5);
    first.drop(4008, "slow consumer");
    const second = await nextSocket(sockets, 1);
    openAndSubscribe(second, 6);
    assert.deepEqual(second.sent, [{ op: "subscribe", conversation_id: CONV, since_seq: 5 }]);
    messages(second, 4, 5, 6);
    assert.deepEqual(seqs, [3, 4, 5, 6]);
    assert.deepEqual(closes, [4008]);
    live.close();
  });

  it("drops a frame past a gap and resubscribes once from the last seq", async () => {
    const { live, sockets, seqs } = setup();
    const gaps: unknown[] = [];
    live.on("gap", (gap) => gaps.push(gap));
    live.subscribe(CONV, { sinceSeq: 0 });
    const socket = await nextSocket(sockets, 0);
    openAndSubscribe(socket, 9);
    messages(socket, 1, 2, 4, 5);
    assert.deepEqual(gaps, [{ conversationId: CONV, lastSeq: 2, receivedSeq: 4 }]);
    assert.deepEqual(socket.sent.at(-1), { op: "subscribe", conversation_id: CONV, since_seq: 2 });
    assert.equal(socket.sent.length, 2, "one resubscribe, however many frames skip");
    socket.receive({ op: "subscribed", conversation_id: CONV, last_seq: 5 });
    messages(socket, 3, 4, 5);
    assert.deepEqual(seqs, [1, 2, 3, 4, 5]);
    live.close();
  });

  it("counts edit and delete events in the seq, and not reactions", async () => {
    const { live, sockets, seqs } = setup();
    const seen: string[] = [];
    live.on("message.updated", (m) => seen.push(`updated ${m.target_seq}`));
    live.on("message.deleted", (m) => seen.push(`deleted ${m.target_seq}`));
    live.on("reaction", (r) => seen.push(`reaction ${r.seq} ${r.action}`));
    live.subscribe(CONV);
    const socket = await nextSocket(sockets, 0);
    openAndSubscribe(socket, 1);
    socket.receive({ op: "message.updated", message: envelope(CONV, 2, { kind: "edit", target_seq: 1 }) });
    socket.receive({
      op: "reaction",
      conversation_id: CONV,
      seq: 1,
      reaction: "+1",
      user_id: "b",
      action: "added",
      count: 1,
    });
    socket.receive({
      op: "message.deleted",
      message: envelope(CONV, 3, { kind: "delete", target_seq: 1, deleted: true }),
    });
    messages(socket, 4);
    assert.deepEqual(seen, ["updated 1", "reaction 1 added", "deleted 1"]);
    assert.deepEqual(seqs, [2, 3, 4]);
    live.close();
  });

  it("surfaces since_seq_expired and does not resume that subscription", async () => {
    const { live, sockets } = setup();
    const expired: unknown[] = [];
    live.on("expired", (event) => expired.push(event));
    live.subscribe(CONV, { sinceSeq: 1 });
    live.subscribe("{0190C0DE-0000-7000-8000-000000000003}", { sinceSeq: 7 });
    const first = await nextSocket(sockets, 0);
    first.open();
    first.receive({ op: "error", code: "since_seq_expired", message: "resync", conversation_id: CONV, since_seq: 1 });
    assert.deepEqual(expired, [{ conversationId: CONV, sinceSeq: 1, code: "since_seq_expired" }]);
    assert.equal(live.lastSeq(CONV), undefined);
    first.drop(1001, "server shutting down");
    const second = await nextSocket(sockets, 1);
    second.open();
    assert.deepEqual(second.sent, [
      { op: "subscribe", conversation_id: "0190c0de-0000-7000-8000-000000000003", since_seq: 7 },
    ]);
    live.close();
  });

  it("keeps a subscription when a receipt is refused, and ends it when access is refused", async () => {
    const { live, sockets } = setup();
    const codes: string[] = [];
    live.on("error", (error) => codes.push(`${error.code} ${error.conversationId}`));
    live.subscribe(CONV);
    const socket = await nextSocket(sockets, 0);
    openAndSubscribe(socket, 4);
    socket.receive({ op: "error", code: "seq_out_of_range", message: "", for: "receipt", conversation_id: CONV });
    assert.equal(live.lastSeq(CONV), 4);
    socket.receive({ op: "error", code: "not_member", message: "", conversation_id: CONV });
    assert.equal(live.lastSeq(CONV), undefined);
    assert.deepEqual(codes, [`seq_out_of_range ${CONV}`, `not_member ${CONV}`]);
    live.close();
  });

  it("reconnects when the server ends a subscription for a passing reason", async () => {
    const { live, sockets } = setup();
    live.subscribe(CONV);
    const first = await nextSocket(sockets, 0);
    openAndSubscribe(first, 4);
    first.receive({ op: "error", code: "dependency_unavailable", message: "", conversation_id: CONV });
    const second = await nextSocket(sockets, 1);
    second.open();
    assert.deepEqual(second.sent, [{ op: "subscribe", conversation_id: CONV, since_seq: 4 }]);
    live.close();
  });

  it("sends receipts and typing, emits presence, and passes unknown frames through", async () => {
    const { live, sockets } = setup();
    const frames: unknown[] = [];
    const presence: unknown[] = [];
    live.on("frame", (frame) => frames.push(frame));
    live.on("presence", (frame) => presence.push(frame));
    assert.equal(live.typing(CONV), false, "nothing is sent before the socket opens");
    live.connect();
    const socket = await nextSocket(sockets, 0);
    socket.open();
    assert.equal(live.receipt(CONV, 3), true);
    assert.equal(live.receipt(CONV, 2, "delivered"), true);
    assert.equal(live.typing(CONV), true);
    assert.deepEqual(socket.sent, [
      { op: "receipt", conversation_id: CONV, seq: 3, kind: "read" },
      { op: "receipt", conversation_id: CONV, seq: 2, kind: "delivered" },
      { op: "typing", conversation_id: CONV },
    ]);
    socket.receive({ op: "presence", conversation_id: CONV, user_id: "bob", status: "online" });
    assert.deepEqual(presence, [{ op: "presence", conversation_id: CONV, user_id: "bob", status: "online" }]);
    socket.receive({ op: "something.new", n: 1 });
    assert.deepEqual(frames, [{ op: "something.new", n: 1 }]);
    live.close();
  });

  it("backs off with growing jittered delays while connecting fails, and stops on close()", async () => {
    const { live, sockets } = setup({ reconnect: { baseDelayMs: 4, maxDelayMs: 32 } });
    const delays: number[] = [];
    live.on("reconnecting", ({ delayMs }) => delays.push(delayMs));
    live.connect();
    for (let i = 0; i < 6; i++) (await nextSocket(sockets, i)).drop(1006);
    live.close();
    const ceilings = [4, 8, 16, 32, 32, 32];
    assert.equal(delays.length, 6);
    delays.forEach((delay, i) => assert.ok(delay >= ceilings[i]! / 2 && delay <= ceilings[i]!, `delay ${i}: ${delay}`));
    await new Promise((resolve) => setTimeout(resolve, 80));
    assert.equal(sockets.length, 6, "no reconnect after close()");
  });

  it("starts the backoff over after a connection that lived through a whole maximum delay", async () => {
    const { live, sockets } = setup({ reconnect: { baseDelayMs: 4, maxDelayMs: 16 } });
    const attempts: number[] = [];
    live.on("reconnecting", ({ attempt }) => attempts.push(attempt));
    live.connect();
    (await nextSocket(sockets, 0)).drop();
    (await nextSocket(sockets, 1)).drop();
    const healthy = await nextSocket(sockets, 2);
    healthy.open();
    await new Promise((resolve) => setTimeout(resolve, 20));
    healthy.drop();
    await nextSocket(sockets, 3);
    live.close();
    assert.deepEqual(attempts, [1, 2, 1]);
  });

  it("stops on revoked credentials with a fixed token, and reconnects with a token function", async () => {
    const fixed = setup();
    const closes: boolean[] = [];
    fixed.live.on("close", ({ willReconnect }) => closes.push(willReconnect));
    fixed.live.connect();
    (await nextSocket(fixed.sockets, 0)).drop(4001, "credentials revoked or expired");
    await new Promise((resolve) => setTimeout(resolve, 40));
    assert.equal(fixed.sockets.length, 1);
    assert.deepEqual(closes, [false]);

    let n = 0;
    const renewing = setup({}, () => `tok-${++n}`);
    renewing.live.connect();
    (await nextSocket(renewing.sockets, 0)).drop(4001);
    const second = await nextSocket(renewing.sockets, 1);
    assert.equal(new URL(second.url).searchParams.get("access_token"), "tok-2");
    renewing.live.close();
  });

  it("pings, and replaces a socket that stays silent for two heartbeats", async () => {
    const { live, sockets } = setup({ heartbeatMs: 50 });
    live.subscribe(CONV);
    const first = await nextSocket(sockets, 0);
    const send = first.send.bind(first);
    let answering = true;
    first.send = (data: string) => {
      send(data);
      if (answering && JSON.parse(data).op === "ping") first.receive({ op: "pong" });
    };
    openAndSubscribe(first, 0);
    await new Promise((resolve) => setTimeout(resolve, 160));
    assert.ok(first.sent.filter((frame) => frame.op === "ping").length >= 2, "pinged");
    assert.equal(sockets.length, 1, "a socket that answers is kept");
    answering = false;
    const second = await nextSocket(sockets, 1);
    assert.equal(first.readyState, 3, "the silent socket was closed");
    openAndSubscribe(second, 0);
    assert.deepEqual(second.sent[0], { op: "subscribe", conversation_id: CONV, since_seq: 0 });
    live.close();
  });
});
