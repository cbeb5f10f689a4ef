// Names for the shapes of the HTTP API, all taken from the types that
// openapi-typescript generates from src/http/openapi.json at build time, so a
// change to the document changes (or breaks) these on the next build.
import type { components, operations } from "./generated/openapi.js";

type Schemas = components["schemas"];

export type Envelope = Schemas["Envelope"];
export type Attachment = Schemas["Attachment"];
export type Conversation = Schemas["Conversation"];
export type ConversationList = Schemas["ConversationList"];
export type InboxEntry = Schemas["InboxEntry"];
export type CreateConversation = Schemas["CreateConversation"];
export type UpdateConversation = Schemas["UpdateConversation"];
export type MemberChange = Schemas["MemberChange"];
export type PutMember = Schemas["PutMember"];
export type Presence = Schemas["Presence"];
export type Role = Schemas["Member"]["role"];
export type SendRequest = Schemas["SendRequest"];
export type BatchResult = Schemas["BatchResult"];
export type EditRequest = Schemas["EditRequest"];
export type ReactionChange = Schemas["ReactionChange"];
export type ReceiptRequest = Schemas["ReceiptRequest"];
export type ReceiptKind = ReceiptRequest["kind"];
export type Marks = Schemas["Marks"];
export type Receipts = Schemas["Receipts"];
export type HistoryPage = Schemas["HistoryPage"];
export type Thread = Schemas["Thread"];
export type CreateUpload = Schemas["CreateUpload"];
export type UploadTarget = Schemas["UploadTarget"];
export type DevTokenResponse = Schemas["DevTokenResponse"];
export type ErrorBody = Schemas["ErrorBody"];

export type OperationId = keyof operations;

/** The query parameters of an operation (all optional in this API). */
export type QueryOf<Op extends OperationId> = NonNullable<operations[Op]["parameters"]["query"]>;

export type HistoryQuery = QueryOf<"history">;
export type ThreadQuery = QueryOf<"thread">;
export type ListConversationsQuery = QueryOf<"listConversations">;

/** A message named by its seq or by its id (a UUIDv7), as the routes accept. */
export type MessageRef = number | string;
