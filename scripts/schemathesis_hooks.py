"""Schemathesis hooks for scripts/schemathesis.sh.

The OpenAPI document states some of msgd's rules in words because JSON Schema
cannot express them: lengths counted in UTF-8 bytes, a header that must equal
a body field, an idempotency key that may not be reused for other content, a
receipt seq that must not pass the conversation's last seq, a reply that must
name a message of the conversation, a history cursor
that only the server can mint, an attachment reference that must name a real
upload, integers written without a fraction (JSON
Schema counts 1.0 as an integer). Schemathesis generates "valid" requests from
the schema alone, so without these hooks the positive-data check would report
the server enforcing its documented rules. Each hook edits a request the
generator meant as valid (positive mode) so that it is valid by those rules
too; requests meant as invalid are left alone.
"""

import os
import re
import unicodedata
import uuid

import schemathesis

SEEDED_MESSAGES = int(os.environ["MSGDST_SEEDED_MESSAGES"])
CURSOR = os.environ["MSGDST_CURSOR"]
SEEDED_USER = os.environ["MSGDST_USER"]


def _utf8_at_most(text, limit, normalize=False):
    """`text` shortened, a character at a time, to at most `limit` UTF-8 bytes."""
    measure = (lambda s: unicodedata.normalize("NFC", s)) if normalize else (lambda s: s)
    while len(measure(text).encode()) > limit and len(text) > 1:
        text = text[:-1]
    return text


def _user_id(case, value):
    """`value` made a valid user id: without the code points the document's
    `UserId` pattern refuses (a value taken from a response or an example may
    hold any), and at most 255 bytes after NFC normalisation."""
    if not isinstance(value, str):
        return value
    pattern = case.operation.schema.raw_schema["components"]["schemas"]["UserId"]["pattern"]
    # The pattern is `^[^ R](?:[^R]*[^ R])?$` for one class R of refused code
    # points, with no space at either end.
    start, end = pattern.index("(?:[^") + len("(?:[^"), pattern.index("]*[^ ")
    refused = re.compile("[" + pattern[start:end] + "]")
    value = refused.sub("", value).strip(" ") or "u"
    return _utf8_at_most(value, 255, normalize=True).strip(" ") or "u"


def _fresh_key(key):
    """The idempotency key made unique, so a generated key never replays another case's message."""
    if not isinstance(key, str):
        return key
    suffix = "." + uuid.uuid4().hex
    return key[: 255 - len(suffix)] + suffix


def _integer(value):
    """JSON Schema counts 1.0 as an integer; msgd wants integers written as integers."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _send_request(body):
    if not isinstance(body, dict):
        return
    if "client_msg_id" in body:
        body["client_msg_id"] = _fresh_key(body["client_msg_id"])
    if isinstance(body.get("content_type"), str):
        body["content_type"] = _utf8_at_most(body["content_type"], 255)
    if "attachments" in body:
        # An attachment must name an upload of this conversation whose bytes
        # are in place: generated references never do.
        body["attachments"] = []
    reply_to = _integer(body.get("reply_to"))
    if isinstance(reply_to, int) and not isinstance(reply_to, bool) and reply_to >= 1:
        # A reply names a message of the conversation: one of the seeded ones.
        body["reply_to"] = 1 + (reply_to - 1) % SEEDED_MESSAGES


@schemathesis.hook
def before_call(context, case, kwargs):
    operation_id = case.operation.definition.raw.get("operationId")
    if operation_id in ("removeMember", "addMember") and case.path_parameters.get("user_id") == SEEDED_USER:
        # The seeded user stays in the seeded conversation, and its owner, or
        # every later request of the user run would be a 403.
        case.path_parameters["user_id"] = "st-peer"
    if operation_id == "deleteConversation":
        # The seeded conversation outlives the run: deletes go to one that does not exist.
        case.path_parameters["id"] = str(uuid.uuid4())
    if operation_id == "updateConversation" and isinstance(case.body, dict) and case.body.get("archived") is True:
        # Nor is it archived, which would make every later send a 409.
        del case.body["archived"]
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    body = case.body
    if case.path_parameters and "user_id" in case.path_parameters:
        case.path_parameters["user_id"] = _user_id(case, case.path_parameters["user_id"])
    if operation_id == "createConversation" and isinstance(body, dict):
        if isinstance(body.get("members"), list):
            body["members"] = [_user_id(case, member) for member in body["members"]]
        if os.environ.get("MSGDST_IDENTITY") == "user":
            # A user who creates a conversation owns it: `owner` is the app's (400 otherwise).
            body.pop("owner", None)
        elif isinstance(body.get("owner"), str):
            body["owner"] = _user_id(case, body["owner"])
    elif operation_id == "devToken" and isinstance(body, dict) and "user_id" in body:
        body["user_id"] = _user_id(case, body["user_id"])
    elif operation_id == "sendMessage":
        _send_request(body)
        headers = case.headers or {}
        header = next((name for name in headers if name.lower() == "idempotency-key"), None)
        if header is not None:
            # The header and client_msg_id must be equal when both are sent.
            headers[header] = _fresh_key(headers[header])
            if isinstance(body, dict) and "client_msg_id" in body:
                body["client_msg_id"] = headers[header]
    elif operation_id == "createUpload" and isinstance(body, dict):
        if "size" in body:
            body["size"] = _integer(body["size"])
    elif operation_id == "sendBatch" and isinstance(body, dict):
        for item in body.get("messages") or []:
            _send_request(item)
    elif operation_id in ("addReaction", "removeReaction") and "reaction" in case.path_parameters:
        # At most 64 UTF-8 bytes after NFC, which the pattern cannot count.
        case.path_parameters["reaction"] = _utf8_at_most(case.path_parameters["reaction"], 64, normalize=True)
    elif operation_id == "postReceipt" and isinstance(body, dict):
        # The seeded conversation's last seq is at least SEEDED_MESSAGES.
        seq = _integer(body.get("seq"))
        if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1:
            seq = 1 + (seq - 1) % SEEDED_MESSAGES
        if seq is not None:
            body["seq"] = seq
    elif operation_id == "listConversations" and case.query and "cursor" in case.query:
        # Only the server mints inbox cursors (bound to the caller).
        del case.query["cursor"]
    elif operation_id == "thread" and case.query and "cursor" in case.query:
        # Only the server mints cursors, and the seeded messages have no thread long enough for one.
        del case.query["cursor"]
    elif operation_id == "history" and case.query:
        query = case.query
        if "cursor" in query:
            # Only the server mints cursors; one comes alone (it carries its query).
            query.clear()
            query["cursor"] = CURSOR
        elif isinstance(query.get("from_ts"), int) and isinstance(query.get("to_ts"), int):
            if query["from_ts"] > query["to_ts"]:
                query["from_ts"], query["to_ts"] = query["to_ts"], query["from_ts"]
