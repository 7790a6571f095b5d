"""The console's routes (``/admin/…``), added to :data:`notifier.web.app.ROUTES`.

Every handler is guarded by :func:`notifier.web.auth.require`: a viewer sees, a sender also
sends, retries and records responses, an admin also manages suppressions. Every POST carries
the session's CSRF token (:func:`notifier.web.auth.checked_form`).
"""

from __future__ import annotations

from starlette.routing import Route

from notifier.web import console_pages, console_records, console_report, console_send

_C = "/admin/consultations/{consultation}"
_O = _C + "/occurrences/{event}/{number:int}"

ROUTES = [
    Route("/admin", console_pages.home, methods=["GET"]),
    Route("/admin/consultations", console_pages.consultations, methods=["GET"]),
    Route(_C, console_pages.consultation, methods=["GET"]),
    Route(_C + "/events/{event}", console_pages.event_preview, methods=["GET"]),
    Route(_C + "/send", console_send.send, methods=["POST"]),
    Route(_O, console_report.occurrence, methods=["GET"]),
    Route(_O + "/progress.json", console_report.progress, methods=["GET"]),
    Route(_O + "/retry", console_report.retry, methods=["POST"]),
    Route(_C + "/responses", console_records.responses, methods=["GET"]),
    Route(_C + "/responses", console_records.record_response, methods=["POST"]),
    Route(_C + "/responses/import", console_records.import_responses, methods=["POST"]),
    Route(_C + "/evidence", console_records.evidence, methods=["GET"]),
    Route(_C + "/evidence/{name}", console_records.evidence_file, methods=["GET"]),
    Route("/admin/suppressions", console_records.suppressions, methods=["GET"]),
    Route("/admin/suppressions", console_records.add_suppression, methods=["POST"]),
    Route("/admin/suppressions/remove", console_records.remove_suppression, methods=["POST"]),
]
