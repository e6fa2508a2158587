#!/bin/sh
# The root filesystem of the gantry image: the binary, the shared libraries it
# loads (as `ldd` lists them, at the same absolute paths) and the system's CA
# bundle (for plugins pulled from registries over HTTPS), nothing else.
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
ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca" ]; then
    mkdir -p "$root/etc/ssl/certs"
    cp -L "$ca" "$root$ca"
else
    echo "rootfs.sh: no CA bundle at $ca; the image will not verify HTTPS registries" >&2
    mkdir -p "$root/etc"
fi
