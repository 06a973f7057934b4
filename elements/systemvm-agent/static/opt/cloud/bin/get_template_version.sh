#!/bin/bash
# The template's half of CloudStack's version handshake (the management server runs this over SSH on 3922
# and splits the line on '&'): "<contents of /etc/cloudstack-release>&<MD5 of the cloud scripts applied>".
# The release line is only final once the boot is done, so wait for boot_up_done first (at most 240 s, as
# the management server allows); answer anyway after that, so the server can report the mismatch itself.
# A program CloudStack runs on the VM, not a build hook: it answers even when a file is missing, so no
# set -e, and DIB_DEBUG_TRACE means nothing at run time.
# dib-lint: disable=sete dibdebugtrace
set -u
set -o pipefail

for _ in $(seq 1 240); do
    [ -f /var/cache/cloud/boot_up_done ] && break
    sleep 1
done
release=$(cat /etc/cloudstack-release 2>/dev/null)
signature=$(cat /var/cache/cloud/cloud-scripts-signature 2>/dev/null)
echo "${release}&${signature}"
