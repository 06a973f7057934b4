#!/bin/bash
# The test payload's patch: the steps CloudStack's systemvm/patch-sysvms.sh takes on a running system VM,
# written for this project (facts: ../shared/cloudstack-4.20-contract.md, "Live patch"). The management server
# copies agent.zip, cloud-scripts.tgz and this script to /var/cache/cloud/ and runs it over SSH at once, both
# right after a boot and to live-patch a running VM. It reads the merged stdout and stderr, splits it on ':'
# and takes the version from "version:<digest> " only when there are exactly two parts: like CloudStack's
# script, this one lets the errors of its steps reach that output (a missing signature file to back up, a
# file another process moved away), so an image that is not quiet while it runs fails the patch as it would
# with CloudStack. The digest is the one the targeted CloudStack line compares (the payload builder sets it).
set -u
set -o pipefail

DIGEST=@DIGEST@
# The unit tests run this on a directory of their own (SVMT_PATCH_ROOT) with stand-ins for systemctl and
# iptables on PATH; on a VM it is /.
ROOT=${SVMT_PATCH_ROOT:-}
CACHE=$ROOT/var/cache/cloud
AGENT_DIR=$ROOT/usr/local/cloud/systemvm
BACKUP=$CACHE/bkpup_live_patch
SCRIPTS=$CACHE/cloud-scripts.tgz
SIGNATURE=$CACHE/cloud-scripts-signature
LOG=$ROOT/var/log/livepatchsystemvm.log
patchfailed=0

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') $*" >> "$LOG"; }

role=$(tr ' ' '\n' < "$CACHE/cmdline" | sed -n 's/^type=//p' | head -n 1)
log "patch of a ${role:-unknown} VM"

# 1. Back up what the patch replaces: the agent (its conf/ apart), the signature, and /etc /var /opt /root.
rm -rf "$BACKUP"
mkdir -p "$BACKUP"
if [ -d "$AGENT_DIR/conf" ]; then
    cp -r "$AGENT_DIR/conf" "$BACKUP/conf"
fi
if [ -n "$(ls -A "$AGENT_DIR" 2>/dev/null)" ]; then  # an agent to keep (zip fails on an empty directory)
    (cd "$AGENT_DIR" && zip -qr "$BACKUP/agent.zip" .)
fi
cp "$SIGNATURE" "$BACKUP/"
# A running system's files change while tar reads them: GNU tar then still writes the archive and exits 1.
tar --warning=no-file-changed -czf "$BACKUP/backup.tgz" -C "$ROOT/" etc var/cache/cloud opt root >> "$LOG" 2>&1

restore() {
    log "patch failed: restoring the backup"
    rm -rf "$AGENT_DIR"
    if [ -f "$BACKUP/agent.zip" ]; then
        mkdir -p "$AGENT_DIR" && unzip -qo "$BACKUP/agent.zip" -d "$AGENT_DIR"
    fi
    tar -xzf "$BACKUP/backup.tgz" -C "$ROOT/" >> "$LOG" 2>&1
    patchfailed=1
}

# Called as `apply || restore`, where bash ignores set -e: every step says `|| return 1` itself.
apply() {
    # 2. A fresh agent, for the roles that run one (its keystore kept, as CloudStack's script keeps it).
    rm -rf "$AGENT_DIR" || return 1
    case "$role" in
        consoleproxy|secstorage)
            mkdir -p "$AGENT_DIR" || return 1
            unzip -qo "$CACHE/agent.zip" -d "$AGENT_DIR" || return 1
            find "$AGENT_DIR" -name '*.sh' -exec chmod 555 {} + || return 1
            if [ -f "$BACKUP/conf/cloud.jks" ]; then
                cp "$BACKUP/conf/cloud.jks" "$AGENT_DIR/conf/" || return 1
            fi
            ;;
    esac
    # 3. The scripts over /; 4. their digest, which the version handshake compares.
    tar -xzf "$SCRIPTS" -C "$ROOT/" --no-same-owner >> "$LOG" || return 1
    "${DIGEST}sum" "$SCRIPTS" | awk '{print $1}' > "$SIGNATURE" || return 1
    # 5. Restart what runs of the role's services, nothing else.
    case "$role" in
        consoleproxy|secstorage|*router)
            systemctl daemon-reload || return 1
            for svc in $(tr ',' ' ' < "$CACHE/enabled_svcs"); do
                if systemctl is-active --quiet "$svc"; then
                    log "restart $svc"
                    systemctl restart "$svc" || return 1
                fi
            done
            ;;
    esac
    # 6. The console proxy's VNC port on its public NIC.
    port=$(cat "$ROOT/root/vncport" 2>/dev/null || echo 8080)
    rule=(INPUT -i eth2 -p tcp -m state --state NEW -m tcp --dport "$port" -j ACCEPT)
    if [ "$role" = consoleproxy ] && ! iptables -C "${rule[@]}" 2>/dev/null; then
        iptables -A "${rule[@]}" || return 1
    fi
}

apply || restore

# 7. The scripts kept where the image keeps its own copy; the delivery removed; 8. the answer.
signature=$("${DIGEST}sum" "$SCRIPTS" | awk '{print $1}')
rm -rf "$BACKUP"
mkdir -p "$ROOT/usr/share/cloud"
mv -f "$SCRIPTS" "$ROOT/usr/share/cloud/cloud-scripts.tgz"
rm -f "$CACHE/agent.zip" "$CACHE/patch-sysvms.sh"
log "done: version $signature, failed=$patchfailed"
if [ "$patchfailed" = 0 ]; then
    echo "version:$signature "
fi
exit "$patchfailed"
