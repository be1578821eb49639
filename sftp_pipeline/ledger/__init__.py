"""The ledger: every document's state and history, the receipts we received, and the audit feed."""
