#!/usr/bin/env bash
# A Debian 13 (trixie) root with Kamailio 6.0 and Python 3.13, cached in .cache/trixie/,
# for the tests that run Pushgate on Kamailio 6.0 (testkit/kamailio.py, ROOTS).
#
# Idempotent: a second run only checks a stamp. Built with debootstrap from the Debian
# mirror the host's own apt configuration names (/etc/apt/sources.list*), so it works
# wherever the host's apt does. Needs root (debootstrap, chroot).
#
#   bash scripts/kamailio-root.sh            build if missing, print the root's path
#   bash scripts/kamailio-root.sh --rebuild  build again from scratch
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."

SUITE=trixie
ROOT=.cache/$SUITE
# What Pushgate needs on the Kamailio side (as scripts/bootstrap.sh installs on the host),
# plus python3 + pytest: the unit tests of the pure modules also run on the root's Python.
PACKAGES=(
  kamailio kamailio-python3-modules kamailio-postgres-modules kamailio-extra-modules
  kamailio-utils-modules kamailio-tls-modules kamailio-outbound-modules
  kamailio-websocket-modules
  python3 python3-pytest
)
STAMP_FILE=.pushgate-root
# The root is rebuilt when this script changes (packages, steps); --rebuild takes Debian's
# updates since the last build.
stamp=$(sha1sum "$self" | cut -c1-12)

if [ "${1:-}" != "--rebuild" ] && [ "$(cat "$ROOT/$STAMP_FILE" 2>/dev/null)" = "$stamp" ]; then
  echo "$ROOT"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "kamailio-root: building $ROOT needs root" >&2; exit 1; }

mkdir -p .cache
exec 9>.cache/.$SUITE.lock
flock 9
# Another run may have finished it while we waited for the lock.
if [ "${1:-}" != "--rebuild" ] && [ "$(cat "$ROOT/$STAMP_FILE" 2>/dev/null)" = "$stamp" ]; then
  echo "$ROOT"
  exit 0
fi

if ! command -v debootstrap >/dev/null; then
  echo "kamailio-root: installing debootstrap" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# The host's Debian mirror: the URI apt uses for its own release's main suite (and
# security suite), from one-line .list files or deb822 .sources files.
host_uri() {  # $1: suite of the host (e.g. bookworm, bookworm-security)
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
  for f in "${files[@]}"; do
    [ -f "$f" ] || continue
    case "$f" in
      *.sources)
        awk -v suite="$1" '
          /^[[:space:]]*#/ { next }
          /^[[:space:]]*$/ { if (uri != "" && has) { print uri; exit } uri = ""; has = 0; next }
          tolower($1) == "uris:" { uri = $2 }
          tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) has = 1 }
          END { if (uri != "" && has) print uri }' "$f" ;;
      *)
        awk -v suite="$1" '
          $1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                        if ($(i + 1) == suite) { print $i; exit } }' "$f" ;;
    esac
  done | head -n1
}
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
mirror=$(host_uri "$codename")
security=$(host_uri "$codename-security")
if [ -z "$mirror" ]; then
  echo "kamailio-root: no Debian mirror for '$codename' in /etc/apt/sources.list*" >&2
  exit 1
fi

started=$(date +%s)
tmp=.cache/$SUITE.new
rm -rf "$tmp" "$ROOT"
echo "kamailio-root: debootstrap $SUITE into $ROOT (once; a few minutes)" >&2
debootstrap --variant=minbase "$SUITE" "$tmp" "$mirror" >.cache/$SUITE-debootstrap.log 2>&1 || {
  tail -n 30 .cache/$SUITE-debootstrap.log >&2
  exit 1
}

{
  echo "Types: deb"
  echo "URIs: $mirror"
  echo "Suites: $SUITE $SUITE-updates"
  echo "Components: main"
  echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
  if [ -n "$security" ]; then
    echo
    echo "Types: deb"
    echo "URIs: $security"
    echo "Suites: $SUITE-security"
    echo "Components: main"
    echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
  fi
} >"$tmp/etc/apt/sources.list.d/debian.sources"
rm -f "$tmp/etc/apt/sources.list"
# Package scripts must not start services in the root.
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
chmod 755 "$tmp/usr/sbin/policy-rc.d"

# apt inside the root, in a private mount namespace (its /proc goes away with it).
# Debian 13's kamailio package no longer ships Kamailio's KEMI examples (Debian 12's has
# them in /usr/share/doc/kamailio/examples/kemi): take them from the same release's source
# package (apt-get source, checksums from the signed .dsc) into /usr/local/share/doc.
unshare --mount --propagation private -- /bin/sh -ec '
  root=$1; shift
  mount -t proc proc "$root/proc"
  chroot "$root" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends "$@"
  chroot "$root" apt-get clean
  src=/var/tmp/kamailio-src
  mkdir -p "$root$src/lists/partial"
  sed "s/^Types: deb$/Types: deb-src/" "$root/etc/apt/sources.list.d/debian.sources" >"$root$src/src.sources"
  opts="-o Dir::Etc::sourcelist=$src/src.sources -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$src/lists"
  chroot "$root" apt-get update -qq $opts
  version=$(chroot "$root" dpkg-query -W -f="\${Version}" kamailio)
  chroot "$root" sh -c "cd $src && apt-get source -qq --download-only -o APT::Sandbox::User=root $opts kamailio=$version"
  examples="$root/usr/local/share/doc/kamailio/examples"
  mkdir -p "$examples"
  tar -xzf "$root$src"/kamailio_*.orig.tar.gz -C "$examples" --strip-components=3 \
    --wildcards "*/misc/examples/kemi/*"
  rm -rf "$root$src"
' sh "$tmp" "${PACKAGES[@]}" >.cache/$SUITE-apt.log 2>&1 || {
  tail -n 30 .cache/$SUITE-apt.log >&2
  exit 1
}
rm -rf "$tmp"/var/lib/apt/lists/*
echo "$stamp" >"$tmp/$STAMP_FILE"
mv "$tmp" "$ROOT"
echo "kamailio-root: $ROOT ready: $(chroot "$ROOT" /usr/sbin/kamailio -v | head -n1)," \
  "$(chroot "$ROOT" python3 --version), $(du -sh "$ROOT" | cut -f1), $(($(date +%s) - started)) s" >&2
echo "$ROOT"
