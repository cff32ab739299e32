#!/usr/bin/env bash
# The layer contract (imports only downward, no cycles; pyproject's [tool.importlinter]) and ruff's
# small rule set ([tool.ruff]). One line each when they pass; their full report when they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
report=$(mktemp); trap 'rm -f "$report"' EXIT
if ! lint-imports --no-cache > "$report" 2>&1; then
  cat "$report" >&2
  echo "lint: import-linter contract broken (above); see docs/architecture.md for the layers" >&2
  exit 1
fi
echo "lint: $(grep -E '^Contracts: ' "$report")"
ruff check --quiet . || { echo "lint: ruff found the problems above" >&2; exit 1; }
echo "lint: ruff check passed"
