#!/usr/bin/env bash
# The test command (README's second set-up command; .ci/run runs exactly this).
# Installs what the tests need (Mesa's lavapipe Vulkan driver for the wgpu tests, Chromium for the
# results page, the SmolLM2 model and the statistics corpus),
# then builds once with every backend compiled in (cpu, wgpu, cuda) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# wgpu runs on the CPU through lavapipe, so the GPU code path is tested without a GPU.
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing mesa-vulkan-drivers (lavapipe) for the wgpu tests..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "error: the wgpu tests need Mesa's lavapipe: install mesa-vulkan-drivers and libvulkan1" >&2
    exit 1
  fi
fi

# The results page (report.html) is checked in headless Chromium.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && [ -z "${CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium (headless) for the results-page test..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "error: the results-page test needs Chromium: install Debian's chromium or set CHROMIUM" >&2
    exit 1
  fi
fi

scripts/fetch_smollm2.sh
scripts/fetch_corpus.sh

# Tests that need the complete data beside the checkout (../shared/data: the full CounterFact dev
# split, zsRE, the downstream tasks, reference tokenizers) skip without it, each recorded here and
# counted below; with CI=true a missing shared file fails its test instead.
skips="$(mktemp)"
trap 'rm -f "$skips"' EXIT
export EDITBENCH_SKIPS="$skips"

# The cuda backend is compiled (it needs no GPU or CUDA toolkit to build) but not run here.
status=0
cargo test --release --workspace --no-fail-fast --features editbench/wgpu,editbench/cuda "$@" \
  || status=$?
# `editbench slurm` against real Slurm daemons started on this machine (root: apt-get, slurmd).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  scripts/test_slurm.sh || status=$?
else
  echo "test_slurm.sh: needs root to install and start Slurm" >> "$skips"
fi
skipped=$(sort -u "$skips" | wc -l)
if [ "$skipped" -gt 0 ]; then
  echo "--- skipped ($skipped tests; cargo counts them as passed):"
  sort -u "$skips" | sed 's/^/  /'
fi
if [ "$status" -eq 0 ]; then
  echo "test command: all tests passed, $skipped skipped (named above)"
else
  echo "test command: FAILED (exit $status), $skipped skipped (named above)"
fi
exit "$status"
