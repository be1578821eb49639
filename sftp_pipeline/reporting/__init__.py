"""The reconciliation report: rendered (HTML + CSV), signed, written to disk and emailed to settlement staff.

* :mod:`.render` — the report's HTML and CSV, signing and writing them;
* :mod:`.mail` — the message, the SMTP session and the on-disk outbox;
* :mod:`.produce` — one call that reconciles a period, writes the report and emails it.
"""
