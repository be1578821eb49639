"""The embedded SFTP server a party runs to receive: per-partner roots, public-key logins only, no shell,
and a hook that collects each upload the moment it completes."""
