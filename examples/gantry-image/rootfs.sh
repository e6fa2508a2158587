#!/bin/sh
# The root filesystem of the gantry image: the binary and the shared libraries
# it loads (as `ldd` lists them, at the same absolute paths), nothing else.
# Usage: rootfs.sh BINARY DIR
set -eu
bin=$1
root=$2
rm -rf "$root"
mkdir -p "$root/tmp"
cp "$bin" "$root/gantry"
ldd "$bin" | tr ' \t' '\n\n' | grep '^/' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
