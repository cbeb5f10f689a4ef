import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { MsgdError } from "./errors.js";
import type {
  ClientFrame,
  ConversationDeletedFrame,
  ConversationUpdatedFrame,
  ErrorFrame,
  MessageFrame,
  PresenceFrame,
  ReactionFrame,
  ReceiptFrame,
  SubscribedFrame,
  TypingFrame,
  UnknownFrame,
} from "./frames.js";
import { canonicalConversationId } from "./ids.js";
import type { Envelope, ReceiptKind } from "./types.js";

/**
 * What the SDK needs of a WebSocket: the browser's, Node 22's global one and
 * the `ws` package all fit. Event parameters are loose on purpose: each
 * implementation types its events differently.
 */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface LiveOptions {
  /** Reconnect delays: from `baseDelayMs` (default 500) doubling to `maxDelayMs` (default 30 000), jittered. */
  reconnect?: BackoffOptions;
  /**
   * An app-level `ping` every this many ms (default 25 000; 0 turns it off).
   * A socket that brings no frame for two intervals is taken as dead (a
   * dropped network often closes nothing) and replaced.
   */
  heartbeatMs?: number;
}

export interface LiveEvents {
  open: [];
  close: [{ code: number; reason: string; willReconnect: boolean }];
  reconnecting: [{ attempt: number; delayMs: number }];
  subscribed: [{ conversationId: string; lastSeq: number }];
  message: [Envelope];
  "message.updated": [Envelope];
  "message.deleted": [Envelope];
  reaction: [ReactionFrame];
  receipt: [ReceiptFrame];
  typing: [TypingFrame];
  presence: [PresenceFrame];
  "conversation.updated": [ConversationUpdatedFrame];
  "conversation.deleted": [ConversationDeletedFrame];
  /** A message frame skipped seqs; the SDK dropped it and resubscribed from `lastSeq`. */
  gap: [{ conversationId: string; lastSeq: number; receivedSeq: number }];
  /**
   * The server cannot replay from `sinceSeq` (`since_seq_expired`: past
   * retention; `invalid_since_seq`: past the conversation's end). The
   * subscription is dropped: reload from history, then subscribe again.
   */
  expired: [{ conversationId: string; sinceSeq: number | undefined; code: string }];
  error: [MsgdError];
  frame: [UnknownFrame];
}

/** What the live client takes from its MsgdClient. */
export interface LiveDeps {
  baseUrl: string;
  apiKey: string;
  accessToken: () => Promise<string | undefined>;
  /** Whether asking `accessToken` again can give a new token (it is a function). */
  renewableToken: boolean;
  WebSocket: WebSocketConstructor | undefined;
  options: LiveOptions;
}

interface Sub {
  /** The highest seq delivered (or the one to resume after); undefined until known. */
  lastSeq: number | undefined;
  /** A subscribe was sent and its `subscribed` has not come yet. */
  pending: boolean;
}

type State = "idle" | "connecting" | "open" | "waiting" | "closed";

const OPEN = 1;
const CLOSE_CREDENTIALS = 4001;
/** Subscription-ending errors that a new connection may not meet again. */
const TRANSIENT = new Set(["internal", "dependency_unavailable", "seq_unavailable"]);
const EXPIRED = new Set(["since_seq_expired", "invalid_since_seq"]);

/**
 * One WebSocket to msgd, kept open: it reconnects with backoff and resumes
 * every subscription after the last seq it delivered, and delivers each seq
 * of a conversation once and in order (duplicates dropped, a gap refilled
 * by resubscribing).
 */
export class LiveClient extends Emitter<LiveEvents> {
  readonly #deps: LiveDeps;
  readonly #backoff: Required<BackoffOptions>;
  readonly #heartbeatMs: number;
  readonly #subs = new Map<string, Sub>();
  #state: State = "idle";
  #socket: WebSocketLike | undefined;
  /** Reconnects since the last connection that lived long enough to count as healthy. */
  #attempt = 0;
  #openedAt = 0;
  #lastFrameAt = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #heartbeat: ReturnType<typeof setInterval> | undefined;

  constructor(deps: LiveDeps) {
    super();
    this.#deps = deps;
    this.#backoff = { baseDelayMs: 500, maxDelayMs: 30_000, ...deps.options.reconnect };
    this.#heartbeatMs = deps.options.heartbeatMs ?? 25_000;
  }

  /** Opens the socket (subscribe does it too); it stays up until close(). */
  connect(): void {
    if (!this.#deps.WebSocket) {
      throw new TypeError("no WebSocket here: pass options.WebSocket (on Node before 22: the ws package's WebSocket)");
    }
    if (this.#state === "idle" || this.#state === "closed") void this.#open(this.#deps.WebSocket);
  }

  /** Closes the socket for good; subscriptions and their seqs are kept for a later connect(). */
  close(): void {
    this.#state = "closed";
    this.#attempt = 0;
    clearTimeout(this.#reconnectTimer);
    const socket = this.#socket;
    if (socket) {
      this.#detach(socket);
      socket.close(1000, "client closing");
      this.emit("close", { code: 1000, reason: "client closing", willReconnect: false });
    }
  }

  /**
   * Delivers `conversationId` from after `sinceSeq` (the highest seq you
   * have), then live. Without `sinceSeq`: after the seq this client last
   * delivered for it, or live from now when it has none.
   */
  subscribe(conversationId: string, { sinceSeq }: { sinceSeq?: number } = {}): void {
    const id = canonicalConversationId(conversationId);
    const sub: Sub = { lastSeq: sinceSeq ?? this.#subs.get(id)?.lastSeq, pending: false };
    this.#subs.set(id, sub);
    if (this.#state === "open") this.#sendSubscribe(id, sub);
    else this.connect();
  }

  unsubscribe(conversationId: string): void {
    const id = canonicalConversationId(conversationId);
    if (this.#subs.delete(id)) this.#send({ op: "unsubscribe", conversation_id: id });
  }

  /** The highest seq delivered for a conversation (what a resume starts after). */
  lastSeq(conversationId: string): number | undefined {
    return this.#subs.get(canonicalConversationId(conversationId))?.lastSeq;
  }

  /**
   * Sends a receipt frame; false when the socket is not open. Marks only move
   * forward; MsgdClient.postReceipt is the call that reports failure.
   */
  receipt(conversationId: string, seq: number, kind: ReceiptKind = "read"): boolean {
    return this.#send({ op: "receipt", conversation_id: canonicalConversationId(conversationId), seq, kind });
  }

  /** Tells the conversation the user is typing (the server keeps one per 2 s); false when not open. */
  typing(conversationId: string): boolean {
    return this.#send({ op: "typing", conversation_id: canonicalConversationId(conversationId) });
  }

  async #open(Socket: WebSocketConstructor): Promise<void> {
    this.#state = "connecting";
    let url: string;
    try {
      url = await this.#url();
    } catch (cause) {
      // The app's token function failed; it may work on a later try.
      this.emit("error", new MsgdError(0, "token_error", "accessToken() failed", { cause }));
      this.#scheduleReconnect();
      return;
    }
    // While the token was fetched, close() may have run, or close() and connect() (whose socket won).
    if (this.#state !== "connecting" || this.#socket) return;
    const socket = new Socket(url);
    this.#socket = socket;
    socket.onopen = () => this.#onOpen(socket);
    socket.onmessage = (event: { data: unknown }) => this.#onMessage(event.data);
    socket.onclose = (event: { code: number; reason: string }) => this.#onClose(socket, event.code, event.reason);
    // Every error is followed by a close event, which is where it is handled.
    socket.onerror = () => {};
  }

  /** Browsers cannot set headers on a WebSocket, so credentials go in the query, as msgd allows. */
  async #url(): Promise<string> {
    const url = new URL(`${this.#deps.baseUrl}/v1/ws`);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("api_key", this.#deps.apiKey);
    const token = await this.#deps.accessToken();
    if (token !== undefined) url.searchParams.set("access_token", token);
    return url.toString();
  }

  #onOpen(socket: WebSocketLike): void {
    this.#state = "open";
    this.#openedAt = this.#lastFrameAt = Date.now();
    this.#startHeartbeat(socket);
    this.emit("open");
    for (const [id, sub] of this.#subs) this.#sendSubscribe(id, sub);
  }

  #onClose(socket: WebSocketLike, code: number, reason: string): void {
    this.#detach(socket);
    if (this.#state === "closed") return;
    const willReconnect = code !== CLOSE_CREDENTIALS || this.#deps.renewableToken;
    this.emit("close", { code, reason, willReconnect });
    if (!willReconnect) {
      this.#state = "closed";
      return;
    }
    // A connection that lived through a whole maximum delay was healthy: start over.
    if (this.#openedAt > 0 && Date.now() - this.#openedAt >= this.#backoff.maxDelayMs) this.#attempt = 0;
    this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    if (this.#state === "closed") return;
    this.#state = "waiting";
    const delayMs = backoffDelay(this.#attempt, this.#backoff);
    this.#attempt += 1;
    this.#openedAt = 0;
    this.emit("reconnecting", { attempt: this.#attempt, delayMs });
    this.#reconnectTimer = setTimeout(() => void this.#open(this.#deps.WebSocket!), delayMs);
  }

  /** Gives up on a socket without waiting for its close handshake (it may never come). */
  #abandon(socket: WebSocketLike, reason: string): void {
    socket.close(1000, reason);
    this.#onClose(socket, 1006, reason);
  }

  #detach(socket: WebSocketLike): void {
    socket.onopen = socket.onmessage = socket.onclose = null;
    // Not null: the ws package throws an error event that has no listener.
    socket.onerror = () => {};
    if (this.#socket === socket) this.#socket = undefined;
    clearInterval(this.#heartbeat);
  }

  #startHeartbeat(socket: WebSocketLike): void {
    if (this.#heartbeatMs <= 0) return;
    this.#heartbeat = setInterval(() => {
      if (Date.now() - this.#lastFrameAt > 2 * this.#heartbeatMs) this.#abandon(socket, "no frame for two heartbeats");
      else this.#send({ op: "ping" });
    }, this.#heartbeatMs);
  }

  #send(frame: ClientFrame): boolean {
    const socket = this.#socket;
    if (this.#state !== "open" || !socket || socket.readyState !== OPEN) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  #sendSubscribe(id: string, sub: Sub): void {
    const frame: ClientFrame = { op: "subscribe", conversation_id: id };
    if (sub.lastSeq !== undefined) frame.since_seq = sub.lastSeq;
    sub.pending = this.#send(frame);
  }

  #onMessage(data: unknown): void {
    this.#lastFrameAt = Date.now();
    if (typeof data !== "string") return; // msgd sends text frames only
    const frame = parseFrame(data);
    if (!frame) {
      this.emit("error", new MsgdError(0, "unexpected_response", `not a frame: ${data.slice(0, 200)}`));
      return;
    }
    switch (frame.op) {
      case "message":
      case "message.updated":
      case "message.deleted":
        return this.#onSeqFrame(frame as unknown as MessageFrame);
      case "subscribed":
        return this.#onSubscribed(frame as unknown as SubscribedFrame);
      case "error":
        return this.#onError(frame as unknown as ErrorFrame);
      case "reaction":
        return this.emit("reaction", frame as unknown as ReactionFrame);
      case "receipt":
        return this.emit("receipt", frame as unknown as ReceiptFrame);
      case "typing":
        return this.emit("typing", frame as unknown as TypingFrame);
      case "presence":
        return this.emit("presence", frame as unknown as PresenceFrame);
      case "conversation.updated":
        return this.emit("conversation.updated", frame as unknown as ConversationUpdatedFrame);
      case "conversation.deleted":
        // Its subscription ended with it: nothing to resume after a reconnect.
        this.#subs.delete(canonicalConversationId(frame.conversation_id as string));
        return this.emit("conversation.deleted", frame as unknown as ConversationDeletedFrame);
      case "pong":
        return;
      default:
        return this.emit("frame", frame);
    }
  }

  #onSubscribed(frame: SubscribedFrame): void {
    const sub = this.#subs.get(frame.conversation_id);
    if (!sub) return;
    sub.pending = false;
    // Subscribed without since_seq: live from here, so resume after this.
    sub.lastSeq ??= frame.last_seq;
    this.emit("subscribed", { conversationId: frame.conversation_id, lastSeq: frame.last_seq });
  }

  /** Enforces "each seq once, in order" for the frames that carry a seq of the log. */
  #onSeqFrame(frame: MessageFrame): void {
    const { conversation_id: id, seq } = frame.message;
    const sub = this.#subs.get(id);
    if (!sub) return; // unsubscribed while it was on its way
    if (sub.lastSeq !== undefined && seq <= sub.lastSeq) return; // a duplicate
    if (sub.lastSeq !== undefined && seq > sub.lastSeq + 1) return this.#onGap(id, sub, sub.lastSeq, seq);
    sub.lastSeq = seq;
    this.emit(frame.op, frame.message);
  }

  /**
   * Drops the frame and asks again from the last seq delivered: the server
   * replays in order. Frames already on their way keep skipping until then,
   * and are dropped without asking again.
   */
  #onGap(id: string, sub: Sub, lastSeq: number, receivedSeq: number): void {
    if (sub.pending) return;
    this.emit("gap", { conversationId: id, lastSeq, receivedSeq });
    this.#sendSubscribe(id, sub);
  }

  #onError(frame: ErrorFrame): void {
    const id = frame.conversation_id ?? undefined;
    const error = new MsgdError(0, frame.code, frame.message, { conversationId: id });
    const sub = id === undefined ? undefined : this.#subs.get(id);
    // An error for a subscribe, or one with no `for` (the server ended the
    // subscription), means the subscription is gone; others (a receipt or
    // typing refused) leave it as it is.
    const ended = sub !== undefined && (frame.for === "subscribe" || frame.for == null);
    if (!ended) return this.emit("error", error);
    if (EXPIRED.has(frame.code)) {
      this.#subs.delete(id!);
      return this.emit("expired", { conversationId: id!, sinceSeq: frame.since_seq ?? sub.lastSeq, code: frame.code });
    }
    this.emit("error", error);
    if (!TRANSIENT.has(frame.code)) {
      this.#subs.delete(id!);
    } else if (this.#socket) {
      // The server may do better on a later try; reconnecting resubscribes
      // everything from its last seq, with the backoff a failing server needs.
      this.#abandon(this.#socket, `subscription ended: ${frame.code}`);
    }
  }
}

function parseFrame(text: string): UnknownFrame | undefined {
  try {
    const frame: unknown = JSON.parse(text);
    const op = (frame as { op?: unknown } | null)?.op;
    return typeof op === "string" ? (frame as UnknownFrame) : undefined;
  } catch {
    return undefined;
  }
}
