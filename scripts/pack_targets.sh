#!/usr/bin/env bash
# Keeps the target vectors of a long sweep in git, so that a machine reset does not cost the hours
# of their search (DEVELOPERS: caches over an hour to rebuild, committed compressed, ≤ 5 MB each).
#
#   scripts/pack_targets.sh pack RUN_DIR NAME     # RUN_DIR/targets → results/cache/NAME-targets.tar.gz
#   scripts/pack_targets.sh unpack RUN_DIR NAME   # back into RUN_DIR/targets (files already there win)
#
# The chunk files are the runner's own (targets-<settings>-<chunk>.json: the settings key, the
# requests and their targets); `editbench run` with the same sweep and --out reads them instead of
# searching, and searches anything missing. What rebuilds them: rerunning the sweep that wrote them.
set -euo pipefail
cmd=${1:-}; run=${2:-}; name=${3:-}
[ -n "$cmd" ] && [ -n "$run" ] && [ -n "$name" ] || { echo "usage: $0 pack|unpack RUN_DIR NAME" >&2; exit 2; }
cd "$(dirname "$0")/.."
archive=results/cache/$name-targets.tar.gz
case $cmd in
  pack)
    [ -d "$run/targets" ] || { echo "error: $run/targets does not exist" >&2; exit 1; }
    mkdir -p results/cache
    tmp=$(mktemp "$archive.XXXXXX")
    tar -C "$run" -czf "$tmp" targets
    size=$(stat -c %s "$tmp")
    if [ "$size" -gt $((5 * 1024 * 1024)) ]; then
      rm -f "$tmp"
      echo "error: $archive would be $((size / 1024)) KB, over the 5 MB a committed cache may take" >&2
      exit 1
    fi
    mv "$tmp" "$archive"
    echo "$archive: $(tar -tzf "$archive" | grep -c '\.json$') chunk files, $((size / 1024)) KB"
    ;;
  unpack)
    [ -f "$archive" ] || { echo "error: $archive does not exist" >&2; exit 1; }
    mkdir -p "$run"
    tar -C "$run" -xzf "$archive" --skip-old-files
    echo "$run/targets: $(ls "$run/targets" | wc -l) chunk files"
    ;;
  *) echo "usage: $0 pack|unpack RUN_DIR NAME" >&2; exit 2 ;;
esac
