"""The embedded SFTP server a party runs to receive: per-partner roots, public-key logins only, no shell,
and a hook that collects each upload the moment it completes.

* :mod:`.embedded` — the server, its host key, its logins (:class:`~.embedded.EmbeddedServer`);
* :mod:`.session` — one partner's SFTP session: the upload rules, request by request.
"""
