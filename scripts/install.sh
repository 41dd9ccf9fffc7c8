#!/usr/bin/env bash
# Build pg_entitlements and install it into the PostgreSQL that PG_CONFIG names
# (scripts/pg_env.sh) the way package managers do: every file is written under a temporary name
# in its destination directory and renamed over the old one. A server running from that
# install keeps the library it has mapped intact (the old file lives on until its last user
# exits) and loads the new build when it restarts (docs/OPERATIONS.md). Writing over the old
# file instead, as `cp` does (and `cargo pgrx test --runas`, through `sudo cp`), rewrites the
# pages the server is executing and crashes it.
#   install.sh [--release]     (a debug build by default)
# Also installs the frozen install and upgrade scripts sql/pg_entitlements--*.sql, so that
# older versions can be created and updated from. Stamps the installed library with the
# commit, profile and time (entitlements.library_version() reports it; src/build_info.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/pg_env.sh

profile=debug
package_flags=(--debug)  # cargo pgrx package builds release unless told --debug
case "${1:-}" in
    --release) profile=release; package_flags=() ;;
    "") ;;
    *) echo "usage: install.sh [--release]" >&2; exit 2 ;;
esac

OUT=$PWD/target/install-$profile
rm -rf "$OUT"
cargo pgrx package "${package_flags[@]}" --pg-config "$PG_CONFIG" --out-dir "$OUT"

# The stamp in src/build_info.rs: the marker, then STAMP_TEXT_LEN bytes of text padded with NUL.
MARKER=PGENT-BUILD:
STAMP_TEXT_LEN=52
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit+=-dirty; fi
STAMP="$commit $profile $(date -u +%Y-%m-%dT%H:%M:%SZ)"
STAMP=${STAMP:0:$STAMP_TEXT_LEN}

stamp() { # FILE: write $STAMP after the single marker in FILE, in place (FILE is our temporary)
    local offsets
    offsets=$(grep -obUa "$MARKER" "$1" | cut -d: -f1)
    if [ "$(printf '%s' "$offsets" | grep -c .)" != 1 ]; then
        echo "install.sh: expected one $MARKER stamp in $1, found: ${offsets:-none}" >&2
        exit 1
    fi
    { printf '%s' "$STAMP"; head -c $((STAMP_TEXT_LEN - ${#STAMP})) /dev/zero; } |
        dd of="$1" bs=1 seek=$((offsets + ${#MARKER})) conv=notrunc status=none
}

temporaries=()
trap 'rm -f "${temporaries[@]}"' EXIT
install_file() { # SRC DEST: a temporary next to DEST, renamed over it (rename(2) is atomic)
    local dir tmp
    dir=$(dirname "$2")
    mkdir -p "$dir"
    tmp=$(mktemp "$dir/.${2##*/}.XXXXXX")
    temporaries+=("$tmp")
    cp "$1" "$tmp"
    chmod 0644 "$tmp"
    if [[ $2 == *.so ]]; then stamp "$tmp"; fi
    mv -f "$tmp" "$2"
    echo "installed $2"
}

# The library first: a script of the new version must never meet the old library's functions.
mapfile -t built < <(cd "$OUT" && find . -type f -name '*.so'; cd "$OUT" && find . -type f ! -name '*.so')
for f in "${built[@]}"; do
    install_file "$OUT/${f#./}" "/${f#./}"
done
extdir=$("$PG_CONFIG" --sharedir)/extension
for f in sql/pg_entitlements--*.sql; do
    install_file "$f" "$extdir/${f#sql/}"
done
echo "build $STAMP"
