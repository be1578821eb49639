"""Two-party fixtures (filled in with the outbound integration tests)."""
