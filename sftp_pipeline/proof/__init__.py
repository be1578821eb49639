"""What proves delivery: signed receipts, the reconciliation of receipts against transfers, the hash-chained
audit log, and evidence bundles an auditor verifies offline."""
