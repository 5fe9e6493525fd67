#!/usr/bin/env bash
# Every test: the workspace on the embedded store (which includes the PostgreSQL backend's own
# tests), then the suites parameterised by backend again on PostgreSQL
# (REMODEL_TEST_BACKEND=postgres: each test gets a database of its own on a throwaway cluster),
# and on the in-memory storage engine (REMODEL_TEST_BACKEND=memory: `Config::in_memory()`,
# which is also what a PostgreSQL replica stands on).
#
# The second pass selects the whole workspace too (`--workspace` with `--test` filters): cargo
# unifies the dependencies' features over the selected packages, so `-p remodel` alone would
# build every dependency a second time with other features (minutes and gigabytes of disk),
# while the same selection reuses what the first pass built. The suite names are unique in the
# workspace, so each runs once.
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace "$@"
echo "== the same suites on PostgreSQL (REMODEL_TEST_BACKEND=postgres)"
REMODEL_TEST_BACKEND=postgres cargo test --workspace \
  --test store --test queries --test feeds --test feed_oracle \
  --test models --test relations --test model_races --test batched --test live_models \
  --test cancel_attack --test feed_churn_attack "$@"
echo "== the same suites on the in-memory engine (REMODEL_TEST_BACKEND=memory)"
REMODEL_TEST_BACKEND=memory cargo test --workspace \
  --test store --test queries --test feeds --test feed_oracle \
  --test models --test relations --test model_races --test batched --test live_models \
  --test cancel_attack --test feed_churn_attack "$@"
