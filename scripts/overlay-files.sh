#!/bin/bash
# overlay-files.sh: our files that configure symlinks into the QEMU tree
# (paths relative to the repository, sorted).  configure links them; the
# Makefile configures again when this list changes.
cd "$(dirname "$0")/.." &&
find hw include qapi subprojects/libpfbd tests/unit tests/qtest docs/devel -type f \
    \( -name '*.c' -o -name '*.h' -o -name meson.build \
    -o -name meson_options.txt -o -name '*.json' -o -name '*.rst' \) \
    2>/dev/null | LC_ALL=C sort
