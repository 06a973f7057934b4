#!/bin/bash
# CloudStack's "is this system VM set up" probe: after copying the patch, the management server runs
# `patched.sh /opt/cloud/bin/keystore*` over SSH until it exits 0, i.e. until the patch's scripts are in place.
# Exit 0 when every path given exists (listing them, oldest first), 1 otherwise.
# A program CloudStack runs on the VM, not a build hook: it answers even when a file is missing, so no
# set -e, and DIB_DEBUG_TRACE means nothing at run time.
# dib-lint: disable=sete dibdebugtrace
set -u
set -o pipefail

[ "$#" -gt 0 ] || { echo "usage: patched.sh PATH..." >&2; exit 2; }
for path in "$@"; do
    [ -e "$path" ] || { echo "$path: not there yet" >&2; exit 1; }
done
ls -ldtr -- "$@"
