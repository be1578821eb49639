#!/bin/sh
# The staging OpenSSH partner: one chrooted SFTP account ("aggregator") laid out exactly as
# deploy/sshd_config.partners describes, with the host key and login key made by staging/setup.py.
set -eu
STAGING=${STAGING:-/staging}
until [ -f "$STAGING/.ready" ]; do sleep 1; done

install -m 0600 "$STAGING/openssh/ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
install -m 0644 "$STAGING/openssh/ssh_host_ed25519_key.pub" /etc/ssh/ssh_host_ed25519_key.pub
# sshd_config.partners also names an RSA host key for old clients; staging makes a 3072-bit one.
[ -f /etc/ssh/ssh_host_rsa_key ] || ssh-keygen -q -t rsa -b 3072 -N '' -f /etc/ssh/ssh_host_rsa_key

getent group sftp-partners >/dev/null || groupadd --system sftp-partners
getent group sftp-pipeline >/dev/null || groupadd --system --gid 10001 sftp-pipeline
id aggregator >/dev/null 2>&1 || useradd --system --gid sftp-partners --home-dir / --shell /usr/sbin/nologin aggregator
# useradd --system leaves the account locked ("!"); sshd refuses locked accounts even for key logins
# unless UsePAM is on, so mark it as having no password instead.
usermod -p '*' aggregator

install -d -o root -g root -m 0755 /srv/sftp /srv/sftp/aggregator
for dir in inbox outbox receipts-in receipts-out; do
  install -d -o aggregator -g sftp-pipeline -m 2770 "/srv/sftp/aggregator/$dir"
  setfacl -m d:u:aggregator:rwX,d:g:sftp-pipeline:rwX "/srv/sftp/aggregator/$dir" || true
done
install -o root -g root -m 0644 "$STAGING/openssh/aggregator.authorized_keys" /etc/ssh/authorized_keys/aggregator

/usr/sbin/sshd -t
exec /usr/sbin/sshd -D -e
