#!/bin/bash
# The management server runs this over SSH to patch a running system VM. The test payload has nothing
# to change; it records that it ran so a test can tell.
set -eu -o pipefail
echo "$(date +%Y-%m-%dT%H:%M:%S) patch-sysvms.sh: test payload, nothing to patch" >> /var/log/cloud.log
