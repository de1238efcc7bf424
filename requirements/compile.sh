#!/usr/bin/env bash
# Regenerate the hashed lock files from pyproject.toml with pip-tools (pip-compile --generate-hashes).
#   requirements/compile.sh                          keep every existing pin, add what is new
#   requirements/compile.sh --upgrade-package NAME   move one package (then run the tests)
# pip-tools runs from a throwaway venv (never a dependency of immutools). pip-compile reads the
# same pip configuration as ./run (find-links, extra index URLs), so the hashes are those of the files
# pip picks there. The full lock (requirements.lock, what ./run test installs) is compiled first; each
# smaller lock starts from it, so a package has one version in every lock.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=$(mktemp -d)
trap 'rm -rf "$TOOLS"' EXIT
python3 -m venv "$TOOLS"
"$TOOLS/bin/python" -m pip install -q --disable-pip-version-check 'pip-tools>=7.4,<8'
compile() {  # OUTPUT SOURCE [pip-compile options]
  local out=$1; shift
  "$TOOLS/bin/pip-compile" -q --generate-hashes --strip-extras --allow-unsafe \
    --no-emit-index-url --no-emit-find-links -o "$out" "$@"
}
compile requirements.lock pyproject.toml --extra test --extra analysis --extra corpus --extra fuzz "$@"
for set in cli analysis corpus; do
  [ -f "requirements/$set.lock" ] || cp requirements.lock "requirements/$set.lock"
done
extras() { [ "$1" = cli ] || echo "--extra $1"; }
pids=()
for set in cli analysis corpus; do
  # shellcheck disable=SC2046
  compile "requirements/$set.lock" pyproject.toml $(extras "$set") -c requirements.lock & pids+=($!)
done
[ -f requirements/build.lock ] || : > requirements/build.lock
compile requirements/build.lock requirements/build.in "$@" & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
