#!/usr/bin/env bash
# Make the local database servers ready for sqlvision's server tests and examples:
# PostgreSQL and MariaDB running, and the pgvector extension installed and enabled in the
# PostgreSQL databases "test" and "postgres". Safe to rerun; a machine without the servers
# is left alone (the server tests then skip, and say why).
set -uo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
say() { echo "setup-services: $*"; }

PGVECTOR_VERSION=0.8.0
PGVECTOR_SHA256=867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0
PGVECTOR_URL=http://deb.debian.org/debian/pool/main/p/pgvector/pgvector_${PGVECTOR_VERSION}.orig.tar.gz

# -- PostgreSQL ---------------------------------------------------------------------------------
if [ -d /etc/postgresql ]; then
  PG=$(ls /etc/postgresql | sort -V | tail -1)
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    say "starting PostgreSQL $PG"
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG" main start || say "could not start PostgreSQL"
  fi
  control=/usr/share/postgresql/$PG/extension/vector.control
  if [ ! -f "$control" ]; then
    apt_ok=0
    if command -v apt-get >/dev/null; then
      as_root apt-get update -qq >/dev/null 2>&1
      # Debian's own package where the release has it; else build Debian's source tarball.
      if as_root apt-get install -y -qq "postgresql-$PG-pgvector" >/dev/null 2>&1; then
        apt_ok=1
      else
        as_root apt-get install -y -qq "postgresql-server-dev-$PG" make gcc curl >/dev/null 2>&1 && apt_ok=2
      fi
    fi
    if [ "$apt_ok" = 2 ]; then
      work=$(mktemp -d)
      if curl -fsSL -o "$work/pgvector.tar.gz" "$PGVECTOR_URL" \
         && echo "$PGVECTOR_SHA256  $work/pgvector.tar.gz" | sha256sum -c --quiet; then
        tar -xzf "$work/pgvector.tar.gz" -C "$work"
        (cd "$work/pgvector-$PGVECTOR_VERSION" && make -s PG_CONFIG="/usr/lib/postgresql/$PG/bin/pg_config" >/dev/null 2>&1 \
          && as_root make -s install PG_CONFIG="/usr/lib/postgresql/$PG/bin/pg_config" >/dev/null 2>&1) \
          || say "building pgvector failed"
      else
        say "could not download pgvector's source"
      fi
      rm -rf "$work"
    fi
    [ -f "$control" ] && say "pgvector installed" || say "pgvector unavailable: similarity search on PostgreSQL uses a plain scan"
  fi
  if [ -f "$control" ]; then
    for database in test postgres; do
      psql -q -h 127.0.0.1 -U postgres -d "$database" -c "CREATE EXTENSION IF NOT EXISTS vector" >/dev/null 2>&1 \
        || say "could not enable pgvector in database $database"
    done
  fi
fi

# -- MariaDB -------------------------------------------------------------------------------------
if [ -x /usr/sbin/mariadbd ] && ! mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
  say "starting MariaDB"
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  for _ in $(seq 30); do mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break; sleep 1; done
fi
exit 0
