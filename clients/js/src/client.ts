import { Transport, type AccessToken, type Call, type FetchLike, type RetryOptions } from "./http.js";
import { randomUuid, sha256Hex, type CryptoLike } from "./ids.js";
import { LiveClient, type LiveOptions, type WebSocketConstructor } from "./live.js";
import { MsgdError } from "./errors.js";
import type {
  Attachment,
  BatchResult,
  Conversation,
  ConversationList,
  CreateConversation,
  CreateUpload,
  DevTokenResponse,
  EditRequest,
  Envelope,
  HistoryPage,
  HistoryQuery,
  InboxEntry,
  ListConversationsQuery,
  Marks,
  MemberChange,
  Presence,
  PutMember,
  UpdateConversation,
  MessageRef,
  ReactionChange,
  ReceiptRequest,
  Receipts,
  SendRequest,
  Thread,
  ThreadQuery,
  UploadTarget,
} from "./types.js";

export interface MsgdClientOptions {
  /** Where msgd answers, e.g. `https://chat.example.com` (with any path prefix a proxy adds). */
  baseUrl: string;
  /** A publishable `msgd_pk_…` key in browsers and apps; `msgd_sk_…` keys stay on backends. */
  apiKey: string;
  /** The user's token; a function is asked again for every request and every (re)connection. */
  accessToken?: AccessToken;
  /** Defaults to the global fetch. */
  fetch?: FetchLike;
  /** Defaults to the global WebSocket (browsers, Node 22+); on Node 18 and 20 pass the ws package's. */
  WebSocket?: WebSocketConstructor;
  /** Defaults to the global Web Crypto (browsers, Node 20+); on Node 18 pass node:crypto's webcrypto. */
  crypto?: CryptoLike;
  retry?: RetryOptions;
  /** One HTTP attempt's deadline in ms (default 30 000). */
  timeoutMs?: number;
  live?: LiveOptions;
}

/** Options of uploadAttachment. */
export interface UploadOptions {
  contentType: string;
  filename?: string;
  /** Lowercase hex SHA-256 of the bytes; computed with Web Crypto when not given. */
  sha256?: string;
}

/** A stored upload: its id (for downloads) and the reference a message carries in `attachments`. */
export interface UploadedAttachment {
  id: string;
  attachment: Attachment;
}

/**
 * The msgd API. Each method is one operation of the OpenAPI document and
 * answers its JSON body; `history` and `thread` page through cursors, and
 * `live` is the WebSocket.
 */
export class MsgdClient {
  readonly #http: Transport;
  readonly #options: MsgdClientOptions;
  #live: LiveClient | undefined;

  constructor(options: MsgdClientOptions) {
    this.#options = options;
    this.#http = new Transport(options);
  }

  /** The one WebSocket of this client, made on first use (connects on connect() or subscribe()). */
  get live(): LiveClient {
    this.#live ??= new LiveClient({
      baseUrl: this.#http.baseUrl,
      apiKey: this.#http.apiKey,
      accessToken: () => this.#http.accessToken(),
      renewableToken: this.#http.renewableToken,
      WebSocket: this.#options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket,
      options: this.#options.live ?? {},
    });
    return this.#live;
  }

  // Conversations and members

  /**
   * Needs a write key with a user token (who becomes owner) or an admin key
   * (created as the app). Not retried after an unknown outcome: it is not idempotent.
   */
  createConversation(body: CreateConversation = {}): Promise<Conversation> {
    return this.#call({ method: "POST", path: "/v1/conversations", json: body, idempotent: false });
  }

  /** One page of the inbox: conversations by last activity, with last message, unread count and mute flag. */
  listConversations(query: ListConversationsQuery = {}): Promise<ConversationList> {
    return this.#call({ method: "GET", path: "/v1/conversations", query, idempotent: true });
  }

  /** The whole inbox, page after page until `next_cursor` is null. */
  async *inbox(query: Omit<ListConversationsQuery, "cursor"> = {}): AsyncGenerator<InboxEntry> {
    for await (const page of pages((cursor) => this.listConversations(cursor ? { ...query, cursor } : query))) {
      yield* page.conversations;
    }
  }

  /** Mutes the conversation for the calling user (a flag the inbox shows). */
  muteConversation(conversationId: string): Promise<void> {
    return this.#call({ method: "PUT", path: `${conversation(conversationId)}/mute`, idempotent: true });
  }

  unmuteConversation(conversationId: string): Promise<void> {
    return this.#call({ method: "DELETE", path: `${conversation(conversationId)}/mute`, idempotent: true });
  }

  /** Who is online in the conversation (live subscriptions on any instance); `presence` frames follow changes. */
  presence(conversationId: string): Promise<Presence> {
    return this.#call({ method: "GET", path: `${conversation(conversationId)}/presence`, idempotent: true });
  }

  getConversation(conversationId: string): Promise<Conversation> {
    return this.#call({ method: "GET", path: conversation(conversationId), idempotent: true });
  }

  /**
   * Changes the title or metadata (owners, moderators) or `archived` (owners);
   * answers the conversation as it is now. Setting the same values again is harmless.
   */
  updateConversation(conversationId: string, body: UpdateConversation): Promise<Conversation> {
    return this.#call({ method: "PATCH", path: conversation(conversationId), json: body, idempotent: true });
  }

  /** Deletes the conversation (owners). Not retried after an unknown outcome: a repeat would answer 403/404. */
  deleteConversation(conversationId: string): Promise<void> {
    return this.#call({ method: "DELETE", path: conversation(conversationId), idempotent: false });
  }

  /** Adds a member, or with `role` sets one (owners give roles; moderators add members). */
  addMember(conversationId: string, userId: string, body: PutMember = {}): Promise<MemberChange> {
    return this.#call({ method: "PUT", path: member(conversationId, userId), json: body, idempotent: true });
  }

  /** Not retried after an unknown outcome: a repeat would answer `not_a_member`. */
  removeMember(conversationId: string, userId: string): Promise<void> {
    return this.#call({ method: "DELETE", path: member(conversationId, userId), idempotent: false });
  }

  // Messages

  /**
   * Sends one message. Without a `client_msg_id` one is made, so that a
   * retry (no answer, 5xx, 429) of the same body is answered with the
   * original message instead of storing a second one.
   */
  sendMessage(conversationId: string, message: SendRequest): Promise<Envelope> {
    const json = { ...message, client_msg_id: message.client_msg_id ?? this.#newId() };
    return this.#call({ method: "POST", path: `${conversation(conversationId)}/messages`, json, idempotent: true });
  }

  /** Sends up to `limits.max_batch` messages, each with its own `client_msg_id` (made when missing) and result. */
  sendBatch(conversationId: string, messages: SendRequest[]): Promise<BatchResult> {
    const json = { messages: messages.map((m) => ({ ...m, client_msg_id: m.client_msg_id ?? this.#newId() })) };
    return this.#call({
      method: "POST",
      path: `${conversation(conversationId)}/messages/batch`,
      json,
      idempotent: true,
    });
  }

  /** One page of history; `history()` follows the cursors for you. */
  historyPage(conversationId: string, query: HistoryQuery = {}): Promise<HistoryPage> {
    return this.#call({ method: "GET", path: `${conversation(conversationId)}/messages`, query, idempotent: true });
  }

  /** Every message the query matches, page after page until `next_cursor` is null. */
  async *history(conversationId: string, query: Omit<HistoryQuery, "cursor"> = {}): AsyncGenerator<Envelope> {
    for await (const page of pages((cursor) => this.historyPage(conversationId, cursor ? { cursor } : query))) {
      yield* page.messages;
    }
  }

  /** A message (or change event) by seq or id, in its current state. */
  getMessage(conversationId: string, message: MessageRef): Promise<Envelope> {
    return this.#call({ method: "GET", path: messagePath(conversationId, message), idempotent: true });
  }

  /** Not retried after an unknown outcome: each edit is an event in the log. */
  editMessage(conversationId: string, message: MessageRef, content: EditRequest): Promise<Envelope> {
    const path = messagePath(conversationId, message);
    return this.#call({ method: "PATCH", path, json: content, idempotent: false });
  }

  /** Deleting again succeeds, so this one is retried. */
  deleteMessage(conversationId: string, message: MessageRef): Promise<void> {
    return this.#call({ method: "DELETE", path: messagePath(conversationId, message), idempotent: true });
  }

  addReaction(conversationId: string, message: MessageRef, reaction: string): Promise<ReactionChange> {
    return this.#call({ method: "PUT", path: reactionPath(conversationId, message, reaction), idempotent: true });
  }

  removeReaction(conversationId: string, message: MessageRef, reaction: string): Promise<ReactionChange> {
    return this.#call({ method: "DELETE", path: reactionPath(conversationId, message, reaction), idempotent: true });
  }

  /** The parent and one page of its replies; `thread()` follows the cursors. */
  threadPage(conversationId: string, message: MessageRef, query: ThreadQuery = {}): Promise<Thread> {
    const path = `${messagePath(conversationId, message)}/thread`;
    return this.#call({ method: "GET", path, query, idempotent: true });
  }

  /** Every reply to `message`, in seq order. */
  async *thread(
    conversationId: string,
    message: MessageRef,
    query: Omit<ThreadQuery, "cursor"> = {},
  ): AsyncGenerator<Envelope> {
    const page = (cursor: string | undefined) => this.threadPage(conversationId, message, cursor ? { cursor } : query);
    for await (const { replies } of pages(page)) yield* replies;
  }

  // Receipts

  /** Marks only move forward, so this one is retried. */
  postReceipt(conversationId: string, receipt: ReceiptRequest): Promise<Marks> {
    const path = `${conversation(conversationId)}/receipts`;
    return this.#call({ method: "POST", path, json: receipt, idempotent: true });
  }

  getReceipts(conversationId: string): Promise<Receipts> {
    return this.#call({ method: "GET", path: `${conversation(conversationId)}/receipts`, idempotent: true });
  }

  // Attachments

  /**
   * Declares an upload; uploadAttachment does this and the upload itself.
   * Retried: a spare target is harmless (retention deletes it).
   */
  createUpload(conversationId: string, upload: CreateUpload): Promise<UploadTarget> {
    const path = `${conversation(conversationId)}/attachments`;
    return this.#call({ method: "POST", path, json: upload, idempotent: true });
  }

  /**
   * Declares the bytes, PUTs them where msgd says (its own upload URL when
   * embedded, a presigned S3 URL with services), and answers what a message
   * puts in `attachments`.
   */
  async uploadAttachment(
    conversationId: string,
    bytes: Uint8Array,
    options: UploadOptions,
  ): Promise<UploadedAttachment> {
    const sha256 = options.sha256 ?? (await sha256Hex(this.#crypto(), bytes));
    const declared = { content_type: options.contentType, size: bytes.byteLength, sha256 };
    const target = await this.createUpload(conversationId, { ...declared, filename: options.filename });
    const { method, url, headers } = target.upload;
    // The upload URL carries its own authorization: msgd's key must not travel to S3.
    await this.#http.request({ method, path: url, bytes, headers, credentials: false, idempotent: true }, discard);
    return { id: target.id, attachment: { key: target.key, ...declared } };
  }

  /**
   * The attachment's bytes as a Response to read or stream. Services mode
   * answers a redirect to a presigned URL, followed here without msgd's
   * credentials; a browser cannot see that redirect, and lets fetch follow it.
   */
  async downloadAttachment(conversationId: string, attachmentId: string): Promise<Response> {
    const path = `${conversation(conversationId)}/attachments/${encodeURIComponent(attachmentId)}`;
    const response = await this.#http.request({ method: "GET", path, idempotent: true, manualRedirect: true }, keep);
    if (response.type === "opaqueredirect") {
      return this.#http.request({ method: "GET", path, idempotent: true }, keep);
    }
    if (response.status < 300 || response.status >= 400) return response;
    const location = response.headers.get("location");
    if (!location) throw new MsgdError(response.status, "unexpected_response", "a redirect without Location");
    const url = new URL(location, this.#http.baseUrl + path).toString();
    return this.#http.request({ method: "GET", path: url, credentials: false, idempotent: true }, keep);
  }

  // Development

  /** A user token from msgd's dev issuer (admin key; 404 unless `auth.dev_tokens.enabled`). */
  devToken(userId: string): Promise<DevTokenResponse> {
    return this.#call({ method: "POST", path: "/v1/dev/token", json: { user_id: userId }, idempotent: true });
  }

  #call<T>(call: Call): Promise<T> {
    return this.#http.json<T>(call);
  }

  #crypto(): CryptoLike | undefined {
    return this.#options.crypto ?? (globalThis as { crypto?: CryptoLike }).crypto;
  }

  #newId(): string {
    return randomUuid(this.#crypto());
  }
}

function conversation(conversationId: string): string {
  return `/v1/conversations/${encodeURIComponent(conversationId)}`;
}

function member(conversationId: string, userId: string): string {
  return `${conversation(conversationId)}/members/${encodeURIComponent(userId)}`;
}

function messagePath(conversationId: string, message: MessageRef): string {
  return `${conversation(conversationId)}/messages/${encodeURIComponent(String(message))}`;
}

function reactionPath(conversationId: string, message: MessageRef, reaction: string): string {
  return `${messagePath(conversationId, message)}/reactions/${encodeURIComponent(reaction)}`;
}

/** Fetches pages until one has no `next_cursor`; the first is fetched without a cursor. */
async function* pages<P extends { next_cursor: string | null }>(
  fetchPage: (cursor: string | undefined) => Promise<P>,
): AsyncGenerator<P> {
  let cursor: string | undefined;
  do {
    const page = await fetchPage(cursor);
    yield page;
    cursor = page.next_cursor ?? undefined;
  } while (cursor !== undefined);
}

async function keep(response: Response): Promise<Response> {
  return response;
}

/** Reads and drops a body nobody needs (S3 answers a PUT with an empty 200). */
async function discard(response: Response): Promise<void> {
  await response.arrayBuffer();
}
