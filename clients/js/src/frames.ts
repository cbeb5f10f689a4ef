// The WebSocket frames of GET /v1/ws (README "WebSocket frames"). The OpenAPI
// document describes them only in prose, so they are written out here; the
// message they carry is the generated Envelope.
import type { Conversation, Envelope, ReceiptKind } from "./types.js";

export interface SubscribedFrame {
  op: "subscribed";
  conversation_id: string;
  /** The conversation's last seq when the subscription was opened. */
  last_seq: number;
}

/** A message, or an edit or delete event: each has its own seq in the conversation's log. */
export interface MessageFrame {
  op: "message" | "message.updated" | "message.deleted";
  message: Envelope;
}

export interface ReactionFrame {
  op: "reaction";
  conversation_id: string;
  /** The seq of the message reacted to (a reaction has no seq of its own). */
  seq: number;
  reaction: string;
  user_id: string;
  action: "added" | "removed";
  count: number;
}

export interface ReceiptFrame {
  op: "receipt";
  conversation_id: string;
  user_id: string;
  delivered_seq: number;
  read_seq: number;
}

export interface TypingFrame {
  op: "typing";
  conversation_id: string;
  user_id: string;
}

/** A user's first session subscribing (`online`), or their last one leaving (`offline`). */
export interface PresenceFrame {
  op: "presence";
  conversation_id: string;
  user_id: string;
  status: "online" | "offline";
}

/** The conversation changed (title, metadata, archive state). */
export interface ConversationUpdatedFrame {
  op: "conversation.updated";
  conversation_id: string;
  conversation: Conversation;
}

/** The conversation was deleted; its subscription ends with this frame. */
export interface ConversationDeletedFrame {
  op: "conversation.deleted";
  conversation_id: string;
}

export interface ErrorFrame {
  op: "error";
  code: string;
  message: string;
  /** The op of the frame this answers; absent when a subscription ended on its own. */
  for?: string | null;
  conversation_id?: string | null;
  client_msg_id?: string | null;
  /** On `since_seq_expired`: the since_seq that can no longer be served. */
  since_seq?: number;
}

/**
 * A frame the SDK passes through as it came: `ack`, `unsubscribed`, and any
 * op it does not know.
 */
export interface UnknownFrame {
  op: string;
  [field: string]: unknown;
}

export type ClientFrame =
  | { op: "subscribe"; conversation_id: string; since_seq?: number }
  | { op: "unsubscribe"; conversation_id: string }
  | { op: "receipt"; conversation_id: string; seq: number; kind: ReceiptKind }
  | { op: "typing"; conversation_id: string }
  | { op: "ping" };
