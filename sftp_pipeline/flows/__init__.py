"""The work on documents, each step recorded in the ledger before the next.

* :mod:`.intake` — a drop folder: what may be taken, what goes to quarantine;
* :mod:`.send` — drop folder → claim → seal → upload → archive;
* :mod:`.collect` — a partner's documents: download, open, deliver, answer with a signed receipt;
* :mod:`.receipt_pull` — the partner's receipts for what we sent: verify, settle the transfer;
* :mod:`.groupcommit` — many documents' ledger changes and fsyncs batched together;
* :mod:`.service` — what every flow is built from (configuration, keys, ledger, transports, clock).

Flows see the ledger and the transports only through their interfaces (:mod:`sftp_pipeline.ledger`,
:mod:`sftp_pipeline.transport`); :mod:`sftp_pipeline.wiring` chooses the implementations.
"""
