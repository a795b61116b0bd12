#!/usr/bin/env bash
# First command of the README: installs build dependencies if missing, builds the Release
# preset and runs the bundled default model. Until the daemon exists (issue #5) this
# generates from the command line; extra arguments are passed to the generator.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release
model=models/recurd-mamba-tiny
if [ -x build/release/tools/recurd-generate ]; then
  exec build/release/tools/recurd-generate --model "$model" "${@:-Once upon a time}"
fi
exec build/release/tools/recurd-eval --model "$model" --tokens "${1:-1,2,3}" --greedy 32
