#!/usr/bin/env bash
# Make the local database servers ready for sqlvision's server tests and examples:
# PostgreSQL and MariaDB running, and the pgvector extension installed and enabled in the
# PostgreSQL databases "test" and "postgres". Safe to rerun; a machine without the servers
# is left alone (the server tests then skip, and say why).
set -uo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
say() { echo "setup-services: $*"; }

# Where Debian's own package is missing (bookworm has none for PostgreSQL 15), pgvector is built
# from Debian's source package of this suite, fetched through apt from the mirror this machine's
# own apt sources name (signatures checked by apt): no download address is written here.
PGVECTOR_SOURCE_SUITE=trixie

# The mirror and keyring of this machine's Debian sources ("URL KEYRING"), from deb822
# .sources files or a one-line sources.list.
debian_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN{RS=""} /Types:[^\n]*deb/ && /Suites:/ && !/-security/ {
           uri=""; key=""
           n=split($0, lines, "\n")
           for (i=1;i<=n;i++) { if (lines[i] ~ /^URIs:/) {split(lines[i],a," "); uri=a[2]}
                                if (lines[i] ~ /^Signed-By:/) {split(lines[i],b," "); key=b[2]} }
           if (uri ~ /debian\/?$/) { print uri, key; exit } }' "$f" && return
  done
  grep -hE '^deb [^[]*debian/? ' /etc/apt/sources.list 2>/dev/null | awk '{print $2, ""; exit}'
}

# Fetch the pgvector source tarball into $1 with apt-get source, using a private apt state
# (the machine's own configuration is left as it is).
fetch_pgvector_source() {
  local dest=$1 mirror keyring state
  read -r mirror keyring <<<"$(debian_mirror)"
  [ -n "$mirror" ] || { say "no Debian mirror found in this machine's apt sources"; return 1; }
  state=$(mktemp -d)
  mkdir -p "$state/lists/partial" "$state/parts"
  echo "deb-src ${keyring:+[signed-by=$keyring] }$mirror $PGVECTOR_SOURCE_SUITE main" > "$state/sources.list"
  say "fetching Debian's pgvector source ($PGVECTOR_SOURCE_SUITE) from $mirror"
  local opts=(-o "Dir::Etc::SourceList=$state/sources.list" -o "Dir::Etc::SourceParts=$state/parts"
              -o "Dir::State::Lists=$state/lists" -o "APT::Get::List-Cleanup=0")
  apt-get "${opts[@]}" update -qq >/dev/null 2>&1 \
    && (cd "$dest" && apt-get "${opts[@]}" source --download-only -qq pgvector >/dev/null 2>&1)
  local rc=$?
  rm -rf "$state"
  return $rc
}

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
      # Debian's own package where the release has it; else build Debian's source package.
      say "installing postgresql-$PG-pgvector (apt-get)"
      if as_root apt-get install -y -qq "postgresql-$PG-pgvector" >/dev/null 2>&1; then
        apt_ok=1
      else
        say "no package; installing the build tools postgresql-server-dev-$PG, make, gcc (apt-get)"
        as_root apt-get install -y -qq "postgresql-server-dev-$PG" make gcc >/dev/null 2>&1 && apt_ok=2
      fi
    fi
    if [ "$apt_ok" = 2 ]; then
      work=$(mktemp -d)
      chmod 777 "$work"  # apt's download user (_apt) writes here
      if fetch_pgvector_source "$work" && tarball=$(ls "$work"/pgvector_*.orig.tar.* 2>/dev/null | head -1) \
         && [ -n "$tarball" ]; then
        tar -xf "$tarball" -C "$work"
        src=$(find "$work" -maxdepth 1 -type d -name 'pgvector-*' | head -1)
        say "building $(basename "$src") against PostgreSQL $PG"
        (cd "$src" && make -s PG_CONFIG="/usr/lib/postgresql/$PG/bin/pg_config" >/dev/null 2>&1 \
          && as_root make -s install PG_CONFIG="/usr/lib/postgresql/$PG/bin/pg_config" >/dev/null 2>&1) \
          || say "building pgvector failed"
      else
        say "could not fetch pgvector's source through apt"
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
  # PL/Python, for predict() inside the server (sqlvision install-functions), and the directory
  # the server's Python imports sqlvision from (install-functions fills it: it needs sqlvision).
  if [ ! -f "/usr/share/postgresql/$PG/extension/plpython3u.control" ] && command -v apt-get >/dev/null; then
    say "installing postgresql-plpython3-$PG (apt-get)"
    as_root apt-get install -y -qq "postgresql-plpython3-$PG" >/dev/null 2>&1 \
      || { as_root apt-get update -qq >/dev/null 2>&1 \
           && as_root apt-get install -y -qq "postgresql-plpython3-$PG" >/dev/null 2>&1; } \
      || say "could not install postgresql-plpython3-$PG: in-database predict() is unavailable"
  fi
  as_root install -d -m 755 /usr/local/lib/sqlvision-plpython \
    || say "could not create /usr/local/lib/sqlvision-plpython"
fi

# -- MariaDB -------------------------------------------------------------------------------------
if [ -x /usr/sbin/mariadbd ] && ! mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
  say "starting MariaDB"
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  for _ in $(seq 30); do mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break; sleep 1; done
fi
bash "$(dirname "$0")/setup-browser.sh"  # Chromium for the web UI tests
exit 0
