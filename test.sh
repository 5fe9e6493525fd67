#!/usr/bin/env bash
# Every test: the workspace on the embedded store (which includes the PostgreSQL backend's own
# tests), then the suites parameterised by backend again on PostgreSQL
# (REMODEL_TEST_BACKEND=postgres: each test gets a database of its own on a throwaway cluster).
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace "$@"
echo "== the same suites on PostgreSQL (REMODEL_TEST_BACKEND=postgres)"
REMODEL_TEST_BACKEND=postgres cargo test -p remodel \
  --test store --test queries --test feeds --test feed_oracle "$@"
REMODEL_TEST_BACKEND=postgres cargo test -p remodel-tests \
  --test models --test relations --test model_races --test batched --test live "$@"
