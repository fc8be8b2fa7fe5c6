#!/usr/bin/env bash
# Makes examples/data/tcl_manual.txt, the text examples/train_charlm.tcl learns
# from: Tcl's own manual pages of its built-in commands, as shipped by
# Debian's tcl8.6-doc, rendered to plain ASCII by groff. Also writes
# tcl_manual.LICENSE: Tcl's licence terms and the copyright lines of the pages
# used.
#
#   examples/data/make_tcl_manual.sh     (needs tcl8.6-doc and groff-base)
#
# The pages are taken in alphabetical order until the text would pass
# LIMIT bytes (default 400000). Each page is rendered 72 columns wide
# without hyphenation, then leading indentation and the runs of spaces of
# justified lines are squeezed, the page header and footer lines (which
# start in the first column) and the rules dropped, and runs of blank lines squeezed to one. The result depends
# only on the package version and groff's, which the licence file records.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")"
LIMIT=${LIMIT:-400000}
out=tcl_manual.txt
lic=tcl_manual.LICENSE

for pkg in tcl8.6-doc groff-base; do
  if ! dpkg -s "$pkg" >/dev/null 2>&1; then
    echo "error: this script needs the Debian package $pkg (apt-get install $pkg)" >&2
    exit 1
  fi
done

render() {  # one page, gzipped roff, to normalised text on stdout
  zcat "$1" | groff -t -man -Tascii -rLL=72n -rHY=0 -P-cbou 2>/dev/null |
    grep -Ev '^[^ ].* {3,}[^ ]+\(3tcl\) *$' | grep -v '^ *_\{10,\} *$' |
    sed -E 's/^ +//; s/ {2,}/ /g; s/ +$//' | cat -s
}

# The built-in command pages: regular files (not the links of the C API
# pages), whose header names them "Tcl Built-In Commands".
pages=()
while IFS= read -r f; do
  [ -f "$f" ] && [ ! -L "$f" ] || continue
  zcat "$f" | groff -man -Tascii -P-cbou 2>/dev/null | head -1 |
    grep -q 'Tcl Built-In Commands' && pages+=("$f")
done < <(dpkg -L tcl8.6-doc | grep '/man3/[a-z][^/]*\.3tcl\.gz$' | sort)

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
used=()
: > "$tmp"
for f in "${pages[@]}"; do
  page=$(render "$f")
  size=$(( $(stat -c %s "$tmp") + ${#page} + 1 ))
  (( size > LIMIT )) && break
  printf '%s\n' "$page" >> "$tmp"
  used+=("$f")
done
mv "$tmp" "$out"
trap - EXIT

{
  echo "examples/data/tcl_manual.txt: the manual pages of ${#used[@]} Tcl built-in commands"
  echo "($(basename "${used[0]}" .3tcl.gz) to $(basename "${used[-1]}" .3tcl.gz), in alphabetical order), from Debian's"
  echo "tcl8.6-doc $(dpkg-query -W -f '${Version}' tcl8.6-doc), rendered to text by $(groff --version | head -1)"
  echo "with examples/data/make_tcl_manual.sh."
  echo
  echo "Copyright notices of these pages:"
  echo
  for f in "${used[@]}"; do
    zcat "$f" | grep -i "^'\\\\\" *Copyright" | sed -E "s/^'\\\\\" *//"
  done | sort -u
  echo
  echo "The pages are distributed under Tcl's licence (license.terms), as stated in"
  echo "/usr/share/doc/tcl8.6-doc/copyright:"
  echo
  sed -n '/^This software is copyrighted by the Regents/,/^terms specified in this license/p' \
    /usr/share/doc/tcl8.6-doc/copyright | sed 's/ *$//'
} > "$lic"

echo "wrote $out ($(stat -c %s "$out") bytes, ${#used[@]} pages) and $lic"
