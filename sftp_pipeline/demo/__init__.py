"""The two-party demo on loopback (``sftp-pipeline demo``), and the sample documents it sends."""
