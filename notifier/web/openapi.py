"""The OpenAPI 3.1 description of the JSON API, served at ``/api/openapi.json``.

Written as data, beside the handlers in :mod:`notifier.web.api` that it describes; the tests
check that every ``/api/`` route is in it and run schemathesis against it.
"""

from __future__ import annotations

import copy
from typing import Any

from notifier import __version__

_EMAIL = {"type": "string", "format": "email", "maxLength": 320}
_TEXT_OR_NULL = {"type": ["string", "null"]}
_WHEN = {"type": ["string", "null"], "format": "date-time"}
_ID = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$", "maxLength": 200}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_CONSULTATION = {
    "name": "consultation",
    "in": "path",
    "required": True,
    "description": "The consultation's id (its file name in config/consultations/).",
    "schema": _ID,
    "example": "soc-strategy-2019",
}
#: Every operation may be refused these ways.
_REFUSALS = {
    "401": _error("No valid bearer token (and no signed-in console user)."),
    "403": _error("A console user whose role cannot do this, or without the X-CSRF-Token header."),
    "404": _error("Not found (or the admin API is off: NOTIFIER_ADMIN_TOKEN unset)."),
    "503": _error("Redis or the database is unavailable; try again later."),
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "What was wrong, in words."},
            "problems": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Report": {
        "type": "object",
        "required": ["consultation", "summary", "deliveries"],
        "properties": {
            "consultation": {"type": "string"},
            "summary": {"type": "array", "items": {"type": "object"}, "description": "Counts per event and channel."},
            "deliveries": {"type": "array", "items": {"type": "object"}, "description": "A row per delivery."},
        },
    },
    "Suppression": {
        "type": "object",
        "required": ["email", "reason", "source", "since"],
        "properties": {
            "email": {"type": "string"},
            "reason": {"type": "string"},
            "source": {"type": "string", "enum": ["config", "unsubscribe", "bounce", "manual", "redis"]},
            "since": _WHEN,
        },
    },
    "NewSuppression": {
        "type": "object",
        "required": ["email", "reason"],
        "examples": [{"email": "jane.smith@telford.example", "reason": "asked by phone not to be e-mailed"}],
        "properties": {
            "email": _EMAIL,
            "reason": {"type": "string", "minLength": 1, "maxLength": 500, "description": "Why (for the audit log)."},
        },
    },
    "NewResponse": {
        "type": "object",
        "required": ["email"],
        "examples": [{"email": "jane.smith@telford.example", "organisation": "Telford & Wrekin CSP"}],
        "properties": {
            "email": _EMAIL,
            "name": _TEXT_OR_NULL,
            "organisation": _TEXT_OR_NULL,
            "reference": _TEXT_OR_NULL,
            "received": {**_WHEN, "description": "When it was received (ISO 8601); now by default."},
        },
    },
    "Response": {
        "type": "object",
        "required": ["id", "consultation", "email", "new", "acknowledging"],
        "properties": {
            "id": {"type": "integer"},
            "consultation": {"type": "string"},
            "email": {"type": "string"},
            "name": _TEXT_OR_NULL,
            "organisation": _TEXT_OR_NULL,
            "received": _WHEN,
            "reference": _TEXT_OR_NULL,
            "recorded_at": {"type": "string", "format": "date-time"},
            "acknowledged": _WHEN,
            "new": {"type": "boolean", "description": "Whether this request recorded it."},
            "acknowledging": {"type": "boolean", "description": "Whether this request queued the thank-you."},
        },
    },
    "Fire": {
        "type": "object",
        "required": ["event"],
        "examples": [{"event": "outcome"}],
        "properties": {
            "event": {**_ID, "maxLength": 64, "description": "The event, configured or on demand (outcome)."},
            "early": {"type": "boolean", "default": False, "description": "Fire a scheduled event before its time."},
            "again": {"type": "boolean", "default": False, "description": "Fire an event that fired (new occurrence)."},
        },
    },
    "Fired": {
        "type": "object",
        "required": ["occurrence", "consultation", "event", "warnings"],
        "properties": {
            "occurrence": {"type": "string"},
            "consultation": {"type": "string"},
            "event": {"type": "string"},
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    },
    "SnsMessage": {
        "type": "object",
        "required": ["Type", "MessageId", "TopicArn", "Timestamp", "SignatureVersion", "Signature", "SigningCertURL"],
        "description": (
            "An Amazon SNS message (HTTP/S delivery), signed by SNS. A `Notification`'s `Message` is an "
            "Amazon SES notification (JSON, as text); only a `Bounce` is recorded."
        ),
        "properties": {
            "Type": {"type": "string", "enum": ["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"]},
            "MessageId": {"type": "string"},
            "TopicArn": {"type": "string"},
            "Subject": {"type": "string"},
            "Message": {"type": "string", "description": "The SES notification, as JSON text."},
            "Timestamp": {"type": "string", "format": "date-time"},
            "SignatureVersion": {"type": "string", "enum": ["1", "2"]},
            "Signature": {"type": "string", "description": "Base64, over the message's canonical form."},
            "SigningCertURL": {"type": "string", "description": "An https URL on an SNS host of Amazon's."},
            "SubscribeURL": {"type": "string", "description": "For a SubscriptionConfirmation."},
            "Token": {"type": "string"},
        },
    },
    "BounceRecorded": {
        "type": "object",
        "required": ["recorded"],
        "properties": {
            "recorded": {
                "type": ["string", "null"],
                "enum": ["bounced", "soft", "already", "unknown", None],
                "description": (
                    "`bounced`: the delivery marked bounced and the address suppressed now; `soft`: a soft "
                    "bounce counted (three in 30 days suppress); `already`: nothing new; `unknown`: it names no "
                    "delivery of ours; null: not a bounce (a delivery or complaint notification)."
                ),
            }
        },
    },
}

_PATHS: dict[str, Any] = {
    "/api/consultations/{consultation}/report": {
        "get": {
            "operationId": "report",
            "summary": "The delivery report of a consultation (viewer)",
            "description": "The JSON of `notifier report --format json`.",
            "parameters": [
                _CONSULTATION,
                {"name": "event", "in": "query", "required": False, "schema": {"type": "string"}},
            ],
            "responses": {"200": _json(_ref("Report"), "The report."), **_REFUSALS},
        }
    },
    "/api/consultations/{consultation}/responses": {
        "post": {
            "operationId": "recordResponse",
            "summary": "Record a consultation response and thank the respondent once (sender)",
            "parameters": [_CONSULTATION],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("NewResponse")}}},
            "responses": {
                "201": _json(_ref("Response"), "Recorded now; its acknowledgement is queued."),
                "200": _json(_ref("Response"), "Recorded before: nothing sent."),
                "409": _error("The consultation's acknowledgement template cannot be rendered."),
                "422": _error("A bad field (each named in problems)."),
                **_REFUSALS,
            },
        }
    },
    "/api/consultations/{consultation}/fire": {
        "post": {
            "operationId": "fire",
            "summary": "Fire an event now, as `notifier send` does (sender)",
            "description": (
                "Warnings never stop it. A scheduled event before its time needs `early: true` (it then does "
                "not fire at its time); an event that fired already needs `again: true`."
            ),
            "parameters": [_CONSULTATION],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Fire")}}},
            "responses": {
                "202": _json(_ref("Fired"), "Fired: the deliveries are queued for the workers."),
                "409": _error("Too early without `early`, or fired already without `again`."),
                "422": _error("A bad body, or the event cannot be sent (its templates; problems says why)."),
                **_REFUSALS,
            },
        }
    },
    "/api/suppressions": {
        "get": {
            "operationId": "listSuppressions",
            "summary": "Every suppressed address (viewer)",
            "description": "From the database (so a Redis flush loses none), and any that only Redis holds.",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["suppressed"],
                        "properties": {"suppressed": {"type": "array", "items": _ref("Suppression")}},
                    },
                    "The suppressions, by address.",
                ),
                **_REFUSALS,
            },
        },
        "post": {
            "operationId": "addSuppression",
            "summary": "Stop e-mailing an address, with a reason (admin)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("NewSuppression")}}},
            "responses": {
                "201": _json(_ref("Suppression"), "Suppressed now."),
                "200": _json(_ref("Suppression"), "Suppressed already: unchanged."),
                "422": _error("A bad address or no reason."),
                **_REFUSALS,
            },
        },
    },
    "/api/suppressions/{email}": {
        "delete": {
            "operationId": "removeSuppression",
            "summary": "E-mail an address again, with a reason (admin)",
            "parameters": [
                {"name": "email", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "reason",
                    "in": "query",
                    "required": True,
                    "description": "Why (for the audit log).",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 500},
                },
            ],
            "responses": {
                "200": _json(_ref("Suppression"), "Lifted."),
                "409": _error("The config suppresses it (subscribed: false): change the list."),
                "422": _error("No reason."),
                **_REFUSALS,
            },
        }
    },
}

_PATHS["/api/bounces"] = {
    "post": {
        "operationId": "recordBounce",
        "summary": "Record an Amazon SES bounce notification delivered by SNS (no token: the SNS signature)",
        "description": (
            "Point an SNS topic's HTTPS subscription here (SES publishes bounces to it). The SNS signature is "
            "the credential: an unsigned or forged message, a signing certificate off Amazon's SNS hosts, or a "
            "topic `NOTIFIER_SNS_TOPIC_ARNS` does not name, is refused with 403 and changes nothing. A signed "
            "SubscriptionConfirmation is confirmed. A bounce naming a delivery whose outcome is not in the "
            "record yet is a 503 with Retry-After, so SNS delivers it again."
        ),
        "security": [],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SnsMessage")}}},
        "responses": {
            "200": _json(
                {"oneOf": [_ref("BounceRecorded"), {"type": "object", "required": ["confirmed"]}]},
                "Recorded (what it did), or the subscription confirmed.",
            ),
            "400": _error("Not an SNS message (JSON), or a notification whose Message is not JSON."),
            "403": _error("Unsigned, forged, a certificate not Amazon's, or a topic not allowed: nothing changed."),
            "502": _error("The subscription could not be confirmed (its SubscribeURL failed)."),
            "503": _error("Redis or the database is unavailable, or the delivery is not in the record yet: retry."),
        },
    }
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "notifier JSON API",
        "version": __version__,
        "description": (
            "For programs: `Authorization: Bearer $NOTIFIER_ADMIN_TOKEN` (an admin). The console's pages may "
            "call it with the session cookie, within the user's role, sending the session's CSRF token in "
            '`X-CSRF-Token` on POST and DELETE. Every error is JSON: `{"error": ...}`.'
        ),
    },
    "security": [{"bearer": []}],
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI document (a copy: a caller may change it)."""
    return copy.deepcopy(_DOCUMENT)
