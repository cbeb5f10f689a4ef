// Every operation of the OpenAPI document, and the SDK method that makes it
// (or why there is none). The type demands an entry for each operationId of
// the generated types, so a route added to openapi.json fails the build until
// it has one; test/operations.test.ts checks methods and paths against the
// document itself.
import type { MsgdClient } from "./client.js";
import type { OperationId } from "./types.js";

type HttpMethod = "GET" | "POST" | "PUT" | "PATCH" | "DELETE";

export type OperationEntry =
  | { method: HttpMethod; path: string; sdk: keyof MsgdClient }
  | { method: HttpMethod; path: string; notForClients: string };

const PROBE = "For probes and operators (orchestrators, Prometheus), not for app clients.";
const ADMIN =
  "The operator's admin API (auth.operator_token), a root credential for every app: never in a client; " +
  "operators call it from their own tooling, or use `msgd keys`.";

export const OPERATIONS = {
  createConversation: { method: "POST", path: "/v1/conversations", sdk: "createConversation" },
  listConversations: { method: "GET", path: "/v1/conversations", sdk: "listConversations" },
  getConversation: { method: "GET", path: "/v1/conversations/{id}", sdk: "getConversation" },
  updateConversation: { method: "PATCH", path: "/v1/conversations/{id}", sdk: "updateConversation" },
  deleteConversation: { method: "DELETE", path: "/v1/conversations/{id}", sdk: "deleteConversation" },
  addMember: { method: "PUT", path: "/v1/conversations/{id}/members/{user_id}", sdk: "addMember" },
  muteConversation: { method: "PUT", path: "/v1/conversations/{id}/mute", sdk: "muteConversation" },
  unmuteConversation: { method: "DELETE", path: "/v1/conversations/{id}/mute", sdk: "unmuteConversation" },
  presence: { method: "GET", path: "/v1/conversations/{id}/presence", sdk: "presence" },
  removeMember: { method: "DELETE", path: "/v1/conversations/{id}/members/{user_id}", sdk: "removeMember" },
  sendMessage: { method: "POST", path: "/v1/conversations/{id}/messages", sdk: "sendMessage" },
  history: { method: "GET", path: "/v1/conversations/{id}/messages", sdk: "historyPage" },
  sendBatch: { method: "POST", path: "/v1/conversations/{id}/messages/batch", sdk: "sendBatch" },
  getMessage: { method: "GET", path: "/v1/conversations/{id}/messages/{message}", sdk: "getMessage" },
  editMessage: { method: "PATCH", path: "/v1/conversations/{id}/messages/{message}", sdk: "editMessage" },
  deleteMessage: { method: "DELETE", path: "/v1/conversations/{id}/messages/{message}", sdk: "deleteMessage" },
  addReaction: {
    method: "PUT",
    path: "/v1/conversations/{id}/messages/{message}/reactions/{reaction}",
    sdk: "addReaction",
  },
  removeReaction: {
    method: "DELETE",
    path: "/v1/conversations/{id}/messages/{message}/reactions/{reaction}",
    sdk: "removeReaction",
  },
  thread: { method: "GET", path: "/v1/conversations/{id}/messages/{message}/thread", sdk: "threadPage" },
  postReceipt: { method: "POST", path: "/v1/conversations/{id}/receipts", sdk: "postReceipt" },
  getReceipts: { method: "GET", path: "/v1/conversations/{id}/receipts", sdk: "getReceipts" },
  createUpload: { method: "POST", path: "/v1/conversations/{id}/attachments", sdk: "createUpload" },
  downloadAttachment: {
    method: "GET",
    path: "/v1/conversations/{id}/attachments/{attachment_id}",
    sdk: "downloadAttachment",
  },
  receiveUpload: {
    method: "PUT",
    path: "/v1/uploads/{token}",
    notForClients:
      "Never addressed by path: uploadAttachment PUTs to the opaque upload.url that createUpload answers " +
      "(this route in embedded mode, a presigned S3 URL with services).",
  },
  websocket: { method: "GET", path: "/v1/ws", sdk: "live" },
  devToken: { method: "POST", path: "/v1/dev/token", sdk: "devToken" },
  createApp: { method: "POST", path: "/v1/admin/apps", notForClients: ADMIN },
  listApps: { method: "GET", path: "/v1/admin/apps", notForClients: ADMIN },
  createKey: { method: "POST", path: "/v1/admin/keys", notForClients: ADMIN },
  listKeys: { method: "GET", path: "/v1/admin/keys", notForClients: ADMIN },
  revokeKey: { method: "DELETE", path: "/v1/admin/keys/{key_id}", notForClients: ADMIN },
  rotateKey: { method: "POST", path: "/v1/admin/keys/{key_id}/rotate", notForClients: ADMIN },
  healthz: { method: "GET", path: "/healthz", notForClients: PROBE },
  readyz: { method: "GET", path: "/readyz", notForClients: PROBE },
  metrics: { method: "GET", path: "/metrics", notForClients: PROBE },
  openapi: {
    method: "GET",
    path: "/openapi.json",
    notForClients: "The document itself: the SDK's types are generated from it at build time.",
  },
  demo: {
    method: "GET",
    path: "/demo",
    notForClients: "The demo chat page (http.demo = true): HTML for a browser, itself a client of this API.",
  },
} as const satisfies { [Op in OperationId]: OperationEntry };
