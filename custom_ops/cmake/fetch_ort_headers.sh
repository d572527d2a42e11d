#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ API headers (Debian's libonnxruntime-dev, ORT 1.21, C API 21) into DEST
# without touching the system: a private apt configuration downloads the .deb and dpkg-deb unpacks it.
# Usage: fetch_ort_headers.sh DEST
#
# No package host is written here: the Debian mirror is the one this machine's apt sources already name
# (/etc/apt/sources.list, /etc/apt/sources.list.d/*.list and *.sources; the main archive entry, not the
# security or updates one), asked for the suite that has the package (Debian 12's own suites lack it).
# Environment overrides:
#   ADDERCONVERT_ORT_HEADERS    a folder that already holds the headers (onnxruntime_cxx_api.h): copied
#                               to DEST, nothing is fetched
#   ADDERCONVERT_DEBIAN_MIRROR  the Debian mirror URI to fetch from instead of the one apt's sources name
#   ADDERCONVERT_DEBIAN_SUITE   the suite to fetch from (default trixie)
# Sourcing this file defines the functions without running anything (the tests call debian_mirror).
set -euo pipefail

die() {
  echo "fetch_ort_headers.sh: $*" >&2
  exit 1
}

# Prints "URI [SIGNED_BY]" for each entry of type deb, with component main and a Debian release suite
# (a codename or stable/testing/...: not -security, -updates, -backports or a third-party suite).
# shellcheck disable=SC2016 # awk program, not shell
awk_sources='
function release(s) {
  return s ~ /^(buster|bullseye|bookworm|trixie|forky|duke|sid|oldoldstable|oldstable|stable|testing|unstable)$/ \
    || (codename != "" && s == codename)
}
function has(list, word,   n, a, i) {
  n = split(list, a, /[ \t]+/)
  for (i = 1; i <= n; i++) if (a[i] == word) return 1
  return 0
}
function any_release(list,   n, a, i) {
  n = split(list, a, /[ \t]+/)
  for (i = 1; i <= n; i++) if (release(a[i])) return 1
  return 0
}
function emit(types, uris, suites, comps, signed, enabled,   u) {
  if (tolower(enabled) == "no" || !has(types, "deb") || !has(comps, "main") || !any_release(suites)) return
  split(uris, u, /[ \t]+/)
  if (u[1] == "") return
  print u[1] (signed ~ /^\// ? " " signed : "")
}
function value(line) { sub(/^[^:]*:[ \t]*/, "", line); sub(/[ \t]+$/, "", line); return line }
fmt == "line" {
  line = $0
  sub(/#.*/, "", line)
  signed = ""
  if (match(line, /\[[^]]*\]/)) {
    opts = substr(line, RSTART + 1, RLENGTH - 2)
    line = substr(line, 1, RSTART - 1) " " substr(line, RSTART + RLENGTH)
    if (match(opts, /signed-by=[^ \t]+/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
  }
  n = split(line, w, /[ \t]+/)
  k = (w[1] == "") ? 2 : 1
  if (w[k] != "deb" || n < k + 3) next
  comps = ""
  for (i = k + 3; i <= n; i++) comps = comps " " w[i]
  emit("deb", w[k + 1], w[k + 2], comps, signed, "yes")
  next
}
fmt == "deb822" && /^[ \t]*#/ { next }
fmt == "deb822" && /^[ \t]*$/ {
  emit(types, uris, suites, comps, signed, enabled)
  types = uris = suites = comps = signed = enabled = ""
  next
}
fmt == "deb822" && /^[^ \t]/ {
  key = tolower($0); sub(/:.*/, "", key)
  if (key == "types") types = value($0)
  else if (key == "uris") uris = value($0)
  else if (key == "suites") suites = value($0)
  else if (key == "components") comps = value($0)
  else if (key == "signed-by") signed = value($0)
  else if (key == "enabled") enabled = value($0)
}
END { if (fmt == "deb822") emit(types, uris, suites, comps, signed, enabled) }
'

# debian_mirror [SOURCE...]: print "URI [SIGNED_BY]" of the first Debian main archive entry in apt's
# sources (files, or folders whose *.list and *.sources are read); default: the machine's own.
# ADDERCONVERT_DEBIAN_MIRROR, if set, wins.
debian_mirror() {
  if [[ -n ${ADDERCONVERT_DEBIAN_MIRROR:-} ]]; then
    echo "$ADDERCONVERT_DEBIAN_MIRROR"
    return
  fi
  (($#)) || set -- /etc/apt/sources.list /etc/apt/sources.list.d
  local src files=() codename=
  for src in "$@"; do
    if [[ -d $src ]]; then
      files+=("$src"/*.list "$src"/*.sources)
    else
      files+=("$src")
    fi
  done
  # The machine's own Debian codename counts as a release suite too (a future one, say).
  if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091 # the machine's own file
    codename=$(. /etc/os-release && [[ ${ID:-} == debian ]] && echo "${VERSION_CODENAME:-}") || codename=
  fi
  local found
  found=$(
    for src in "${files[@]}"; do
      [[ -f $src ]] || continue
      case $src in
        *.sources) awk -v fmt=deb822 -v codename="$codename" "$awk_sources" "$src" ;;
        *) awk -v fmt=line -v codename="$codename" "$awk_sources" "$src" ;;
      esac
    done | head -n 1
  )
  [[ -n $found ]] || die "no Debian main archive entry (deb, a release suite such as bookworm, component main) in" \
    "apt's sources ($*); set ADDERCONVERT_DEBIAN_MIRROR to a Debian mirror URI, or ADDERCONVERT_ORT_HEADERS to a folder" \
    "holding onnxruntime_cxx_api.h"
  echo "$found"
}

main() {
  [[ $# -eq 1 && -n $1 ]] || die "usage: fetch_ort_headers.sh DEST"
  local dest=$1
  if [[ -n ${ADDERCONVERT_ORT_HEADERS:-} ]]; then
    local headers=$ADDERCONVERT_ORT_HEADERS
    [[ -f $headers/onnxruntime_cxx_api.h ]] || die "ADDERCONVERT_ORT_HEADERS=$headers holds no" \
      "onnxruntime_cxx_api.h; set it to a folder of ONNX Runtime headers (C API 21), or unset it to fetch them"
    mkdir -p "$dest"
    if [[ $(cd "$headers" && pwd -P) != $(cd "$dest" && pwd -P) ]]; then
      cp -r "$headers/." "$dest/"
    fi
    echo "ONNX Runtime headers in $dest (from ADDERCONVERT_ORT_HEADERS)"
    return
  fi
  if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    die "apt-get and dpkg-deb are needed to fetch libonnxruntime-dev; set ADDERCONVERT_ORT_HEADERS to a" \
      "folder holding onnxruntime_cxx_api.h"
  fi
  local suite=${ADDERCONVERT_DEBIAN_SUITE:-trixie} mirror uri signed
  mirror=$(debian_mirror)
  read -r uri signed <<<"$mirror"
  work=$(mktemp -d) # global: the EXIT trap runs after main has returned
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/sources.list.d"
  echo "deb ${signed:+[signed-by=$signed] }$uri $suite main" >"$work/sources.list"
  local apt_opts=(-q -o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/sources.list.d"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root)
  if ! { apt-get "${apt_opts[@]}" update && (cd "$work" && apt-get "${apt_opts[@]}" download libonnxruntime-dev); } \
    >"$work/apt.log" 2>&1; then
    local reason
    # apt's first failed fetch with its cause (the indented line under it), else its first error.
    reason=$(awk '/^Err:/ { getline cause; sub(/^[ \t]+/, "", cause); print $0 ": " cause; exit }' "$work/apt.log")
    [[ -n $reason ]] || reason=$(grep -m 1 -E '^(E|W):' "$work/apt.log" || tail -n 1 "$work/apt.log")
    die "could not download libonnxruntime-dev from $uri (suite $suite): ${reason:-apt-get failed};" \
      "set ADDERCONVERT_DEBIAN_MIRROR to a reachable Debian mirror URI (ADDERCONVERT_DEBIAN_SUITE to a suite" \
      "that has it), or ADDERCONVERT_ORT_HEADERS to a folder holding onnxruntime_cxx_api.h"
  fi
  dpkg-deb -x "$work"/libonnxruntime-dev_*.deb "$work/root"
  [[ -f $work/root/usr/include/onnxruntime/onnxruntime_cxx_api.h ]] \
    || die "libonnxruntime-dev from $uri (suite $suite) holds no usr/include/onnxruntime/onnxruntime_cxx_api.h;" \
      "set ADDERCONVERT_ORT_HEADERS to a folder holding it"
  mkdir -p "$dest"
  cp -r "$work/root/usr/include/onnxruntime/." "$dest/"
  echo "ONNX Runtime headers in $dest (libonnxruntime-dev from $uri $suite)"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
