#!/bin/bash
# Lays out build/<kind>/pkg/fastmap: symlinks to src/fastmap's Python files plus the
# sanitized extension build/<kind>/_core<EXT_SUFFIX>. With build/<kind>/pkg first on
# PYTHONPATH, `import fastmap` loads the sanitized _core and today's Python sources
# (PYTHONPATH precedes the editable install's path), and the normal build is untouched.
#   usage: tools/sanitize/link-pkg.sh asan|tsan
set -euo pipefail
cd "$(dirname "$0")/../.."
kind=$1
pkg=build/$kind/pkg/fastmap
rm -rf "build/$kind/pkg"
mkdir -p "$pkg"
for f in src/fastmap/*; do
  case $f in *.so) continue ;; esac
  ln -s "$PWD/$f" "$pkg/"
done
ln -s "$PWD"/build/$kind/_core.*.so "$pkg/"
