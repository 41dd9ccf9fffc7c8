#!/usr/bin/env bash
# The benchmarks of docs/BENCHMARKS.md: a release build on a fresh cluster, each figure
# measured side by side with its baseline in the same run. Never part of `make test` (this
# machine is shared and noisy: figures, not assertions).
#   scripts/bench.sh [cache|stripe|audit ...]   (default: all that exist)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh
echo "[bench] release build"
bash scripts/install.sh --release >/dev/null
which=("$@")
[ ${#which[@]} -gt 0 ] || which=(cache churn stripe audit audit_views catalog limits)
export SKIP_INSTALL=1  # installed above
for b in "${which[@]}"; do
    # psycopg lives in the virtual environment setup.sh made.
    if [ -f "scripts/bench_$b.py" ]; then .run/venv/bin/python "scripts/bench_$b.py"
    elif [ -f "scripts/bench_$b.sh" ]; then bash "scripts/bench_$b.sh"
    fi
done
