#!/usr/bin/env bash
# The servers run as the `postgres` OS user with their data under this checkout; when the
# checkout sits below a directory that user cannot traverse (say /root, mode 700), grant
# traverse-only permission (o+x: enter, not list) on each ancestor that lacks it, and say so.
#   pg_can_reach.sh DIR
set -euo pipefail
target=$(realpath -m "$1")
mkdir -p "$target"
sudo -u postgres test -x "$target" 2>/dev/null && exit 0
d=$target
while [ "$d" != "/" ]; do
    if [ -d "$d" ] && ! sudo -u postgres test -x "$d" 2>/dev/null; then
        echo "[setup] chmod o+x $d (so the postgres OS user can reach the cluster data)" >&2
        chmod o+x "$d"
    fi
    d=$(dirname "$d")
done
