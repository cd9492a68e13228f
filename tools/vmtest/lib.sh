# shellcheck shell=bash
# Helpers shared by the fastmap vmtest scripts (sourced, not run).

# Directory holding these scripts.
vmtest_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

vmtest_log() { echo "vmtest: $*" >&2; }
vmtest_die() { echo "vmtest: error: $*" >&2; exit "${VMTEST_DIE_RC:-2}"; }

# Root of the repository these scripts live in (falls back to ../.. of this dir).
vmtest_repo_root() {
  local top
  if top=$(git -C "$vmtest_dir" rev-parse --show-toplevel 2>/dev/null) && [ -n "$top" ]; then
    echo "$top"
  else
    (cd "$vmtest_dir/../.." && pwd)
  fi
}

vmtest_cache_dir() { echo "${FASTMAP_VMTEST_CACHE:-${HOME:-/root}/.cache/fastmap-vmtest}"; }

# Short content hash of the kernel config fragment: names the cached bzImage.
vmtest_config_hash() { sha256sum "$vmtest_dir/kernel.config" | cut -c1-16; }

vmtest_codename() { sed -n 's/^VERSION_CODENAME=//p' /etc/os-release | tr -d '"'; }

# The archive URI the machine already uses for its main Debian suite ($1 = codename).
vmtest_debian_uri() {
  local codename=$1 uri="" f=/etc/apt/sources.list.d/debian.sources
  if [ -r "$f" ]; then
    # deb822: the first URIs: of a stanza whose Suites: lists the bare codename.
    uri=$(awk -v c="$codename" '
      BEGIN { RS = ""; FS = "\n" }
      {
        u = ""; s = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)   { sub(/^URIs:[ \t]*/, "", $i); split($i, a, /[ \t]+/); u = a[1] }
          if ($i ~ /^Suites:/) { n = split($i, b, /[ \t]+/); for (j = 2; j <= n; j++) if (b[j] == c) s = 1 }
        }
        if (s && u != "") { print u; exit }
      }' "$f")
  fi
  if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
    uri=$(awk -v c="$codename" '$1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i + 1) == c) { print $i; exit } }' /etc/apt/sources.list)
  fi
  echo "$uri"
}

# On bookworm, make sure the bookworm-backports suite is configured (deb822 file).
# Prints "added" when it wrote a new file (the caller then runs apt-get update).
vmtest_ensure_backports() {
  local list=/etc/apt/sources.list.d/bookworm-backports.sources uri
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    return 0
  fi
  uri=$(vmtest_debian_uri bookworm)
  [ -n "$uri" ] || vmtest_die "cannot find the Debian archive URI in the apt sources"
  {
    echo "Types: deb"
    echo "URIs: $uri"
    echo "Suites: bookworm-backports"
    echo "Components: main"
    if [ -r "$keyring" ]; then echo "Signed-By: $keyring"; fi
  } > "$list"
  vmtest_log "added $list (URIs: $uri)"
  echo added
}
