"""sftp-pipeline: OpenPGP-sealed, receipted document exchange over SFTP."""

__version__ = "0.1.0"
SOFTWARE = f"sftp-pipeline/{__version__}"
