#!/usr/bin/env bash
# The whole test suite: starts the real Postgres, Redis and S3 servers the
# services-mode tests need (installing them on a fresh Debian machine), runs
# every test, and stops the servers again. This is the README's test command
# and exactly what CI (.ci/run) runs.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
DIR="${MSGDTEST_SERVICES_DIR:-/tmp/msgd-services}"
export MSGDTEST_SERVICES_DIR="$DIR"
scripts/services.sh up
trap 'scripts/services.sh down' EXIT
# shellcheck disable=SC1091
. "$DIR/env"
export MSGDTEST_REQUIRE_SERVICES=1
cargo test --locked "$@"
# The whole suite (no test filter) also runs the contract tests against the
# binary cargo test just built.
if [ "$#" -eq 0 ]; then
  scripts/deploy-check.sh # deploy/: systemd-analyze verify, compose, Dockerfile, proxies (deploy/README.md)
  scripts/schemathesis.sh
  scripts/sdk-test.sh # the TypeScript SDK: unit tests and a live msgd (clients/js/README.md)
  scripts/demo-test.sh # the demo page in headless Chromium (clients/demo-test/README.md)
  scripts/fuzz.sh # bounded runs of every fuzz target (fuzz/README.md)
fi
