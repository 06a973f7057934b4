#!/bin/bash
# cloud.service starts this, as it starts CloudStack's own agent: the boot command line is the
# agent's configuration (host, port, name, type).
set -eu
set -o pipefail
cd "$(dirname "$0")"
# shellcheck disable=SC2046 # one argument per key=value word, on purpose
exec python3 agent.py $(cat /var/cache/cloud/cmdline 2>/dev/null || true)
