#!/usr/bin/env bash
# First command of the README: installs build dependencies if missing, builds the Release
# preset and starts the daemon on the bundled default model (models/recurd-mamba-tiny),
# listening on 127.0.0.1:50051. Extra arguments go to recurd (see `recurd --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release
exec build/release/daemon/recurd "$@"
