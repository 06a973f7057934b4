#!/bin/bash
# The test payload's live patch: the steps CloudStack 4.16+'s patch-sysvms.sh takes on a running system VM,
# written for this project (see ../shared/cloudstack-4.20-contract.md, "Live patch"). The management server
# copies agent.zip, cloud-scripts.tgz and this script to /var/cache/cloud/, runs it over SSH and reads the
# last "version:<md5> " it prints; a non-zero exit fails the patch.
set -eu
set -o pipefail

CACHE=/var/cache/cloud
AGENT_DIR=/usr/local/cloud/systemvm
BACKUP=$CACHE/bkpup_live_patch
SCRIPTS=$CACHE/cloud-scripts.tgz
LOG=/var/log/livepatchsystemvm.log
patchfailed=0

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') $*" >> "$LOG"; }

role=$(tr ' ' '\n' < "$CACHE/cmdline" | sed -n 's/^type=//p' | head -n 1)
log "live patch of a ${role:-unknown} VM"

# 1. Back up what the patch replaces: the agent (with its conf/ and keystore) and the scripts' targets.
rm -rf "$BACKUP"
mkdir -p "$BACKUP"
if [ -d "$AGENT_DIR" ]; then
    (cd "$AGENT_DIR" && zip -qr "$BACKUP/agent.zip" .)
fi
# A running system's files change while tar reads them (a service rewriting its state, seen on a consoleproxy
# right after boot): GNU tar then still writes the archive and exits 1; only 2 means no backup.
status=0
tar --warning=no-file-changed -czf "$BACKUP/backup.tgz" -C / etc opt root 2>> "$LOG" || status=$?
if [ "$status" -gt 1 ]; then
    log "backup failed (tar exit $status): nothing patched"
    exit 1
fi

restore() {
    log "patch failed: restoring the backup"
    rm -rf "$AGENT_DIR"
    if [ -f "$BACKUP/agent.zip" ]; then
        mkdir -p "$AGENT_DIR" && unzip -qo "$BACKUP/agent.zip" -d "$AGENT_DIR"
    fi
    tar -xzf "$BACKUP/backup.tgz" -C / 2>> "$LOG" || true
    patchfailed=1
}

# Called as `apply || restore`, where bash ignores set -e: every step says `|| return 1` itself.
apply() {
    # 2. A fresh agent, for the roles that run one.
    rm -rf "$AGENT_DIR" || return 1
    case "$role" in
        consoleproxy|secstorage)
            mkdir -p "$AGENT_DIR" || return 1
            unzip -qo "$CACHE/agent.zip" -d "$AGENT_DIR" || return 1
            # The agent's own state survives the patch: its keystore (CloudStack's script keeps it too) and
            # the agent.properties the boot wrote from the command line (the fresh zip's has no host or type).
            if [ -f "$BACKUP/agent.zip" ]; then
                unzip -qo "$BACKUP/agent.zip" 'conf/cloud.jks' 'conf/agent.properties' -d "$AGENT_DIR" \
                    2>/dev/null || true
            fi
            ;;
    esac
    # 3. The scripts over /; 4. their MD5, which the version handshake compares.
    tar -xzf "$SCRIPTS" -C / --no-same-owner || return 1
    md5sum "$SCRIPTS" | awk '{print $1}' > "$CACHE/cloud-scripts-signature" || return 1
    # 5. Restart what runs of the role's services, nothing else.
    case "$role" in
        consoleproxy|secstorage|*router)
            for svc in $(tr ',' ' ' < "$CACHE/enabled_svcs" 2>/dev/null); do
                if systemctl is-active --quiet "$svc"; then
                    log "restart $svc"
                    systemctl restart "$svc" || return 1
                fi
            done
            ;;
    esac
    # 6. The console proxy's public port.
    rule=(INPUT -i eth2 -p tcp -m state --state NEW -m tcp --dport 8080 -j ACCEPT)
    if [ "$role" = consoleproxy ] && ! iptables -C "${rule[@]}" 2>/dev/null; then
        iptables -A "${rule[@]}" || return 1
    fi
}

if ! apply >> "$LOG" 2>&1; then
    restore
fi

# 7. Keep the scripts where the image keeps its own copy; 8. answer the management server.
signature=$(md5sum "$SCRIPTS" | awk '{print $1}')
mkdir -p /usr/share/cloud
mv -f "$SCRIPTS" /usr/share/cloud/cloud-scripts.tgz
log "done: version $signature, failed=$patchfailed"
echo "version:$signature "
exit "$patchfailed"
