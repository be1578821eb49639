"""sftp-pipeline: OpenPGP-sealed, receipted document exchange over SFTP."""

__version__ = "0.2.0"
SOFTWARE = f"sftp-pipeline/{__version__}"
