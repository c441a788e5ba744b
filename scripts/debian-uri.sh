#!/bin/bash
# debian-uri.sh CODENAME
#
# Print the URI of this machine's own Debian archive entry for CODENAME
# (deb822 *.sources or one-line *.list format), skipping the security
# archive; print nothing and exit 1 if there is none.  Used by
# scripts/install-deps.sh (to add suites) and tests/image/build-image.sh
# (the mirror of the image), so that no registry host name is written
# anywhere in the project.
set -euo pipefail

codename=${1:?usage: $0 CODENAME}

for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk -v cn="$codename" '
        function check() {
            if (u != "" && s ~ ("(^| )" cn "( |$)")) { print u; found = 1 }
        }
        found      { next }
        /^[ \t]*$/ { check(); u = ""; s = ""; next }
        /^URIs:/   { u = $2 }
        /^Suites:/ { $1 = ""; s = $0 " " }
        END        { if (!found) check() }' "$f")
    if [ -n "$uri" ]; then
        echo "$uri"
        exit 0
    fi
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk -v cn="$codename" '$1 == "deb" && $0 !~ /security/ {
              for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {
                  if ($(i + 1) == cn) { print $i; exit } } }' "$f")
    if [ -n "$uri" ]; then
        echo "$uri"
        exit 0
    fi
done
exit 1
