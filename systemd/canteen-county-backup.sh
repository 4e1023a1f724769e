#!/bin/sh
# One nightly dump of the county database, then the retention: what
# canteen-county-backup.service runs (docs/county-ops.md, "Backups").
#
# It owns the backup directory's contents: dumps are named
# canteen-county-YYYYMMDDTHHMMSSZ.dump (UTC, so they sort by time), written under a
# .partial name, its table of contents read back with pg_restore --list (a file that is
# no custom-format archive is no backup), and only then renamed into place, so a crash or a full disk never leaves a file that
# looks like a good dump. pg_dump syncs its file to disk itself (PostgreSQL's pg_dump
# documentation, --no-sync).
#
# Where pg_dump connects comes from libpq's variables (PGHOST, PGPORT, PGDATABASE,
# PGUSER, PGPASSFILE); this script names no server and no password.
#   CANTEEN_COUNTY_BACKUP_DIR        where the dumps go (default /var/backups/canteen-county)
#   CANTEEN_COUNTY_BACKUP_KEEP_DAYS  dumps older than this many days are removed (default 14)
#   CANTEEN_COUNTY_BACKUP_KEEP_MIN   the newest this many dumps are kept whatever their age
#                                    (default 7), so that nights of failed dumps never
#                                    leave the directory empty
# Exit status: 0 when the dump was written and checked; not 0 otherwise (the unit fails,
# and the monitoring in docs/county-ops.md sees it).
set -eu
# The dumps hold every cadre's meals: readable by the backup user alone (as the unit's
# UMask=0077, also when run by hand).
umask 077

dir=${CANTEEN_COUNTY_BACKUP_DIR:-/var/backups/canteen-county}
keep_days=${CANTEEN_COUNTY_BACKUP_KEEP_DAYS:-14}
keep_min=${CANTEEN_COUNTY_BACKUP_KEEP_MIN:-7}

fail() {
    echo "canteen-county-backup: $*" >&2
    exit 1
}

case $keep_days in '' | *[!0-9]*) fail "CANTEEN_COUNTY_BACKUP_KEEP_DAYS=$keep_days: expected a whole number of days" ;; esac
[ "$keep_days" -ge 1 ] || fail "CANTEEN_COUNTY_BACKUP_KEEP_DAYS=0: keep dumps at least 1 day"
case $keep_min in '' | *[!0-9]*) fail "CANTEEN_COUNTY_BACKUP_KEEP_MIN=$keep_min: expected a whole number of dumps" ;; esac
[ -d "$dir" ] && [ -w "$dir" ] || fail "$dir: no such writable directory (systemd-tmpfiles --create /etc/tmpfiles.d/canteen-county.conf)"

name=canteen-county-$(date -u +%Y%m%dT%H%M%SZ).dump
partial=$dir/.$name.partial
trap 'rm -f "$partial"' EXIT

# -Fc: the custom format, compressed, restorable table by table with pg_restore.
# --no-password: a missing password is an error at once, never a prompt.
pg_dump --format=custom --no-password --file="$partial" ||
    fail "pg_dump failed (see the lines above); no dump written tonight"
pg_restore --list "$partial" >/dev/null ||
    fail "pg_restore cannot read tonight's dump; it was not kept"
mv "$partial" "$dir/$name"
trap - EXIT
sync "$dir"
echo "canteen-county-backup: wrote $dir/$name ($(wc -c <"$dir/$name") bytes)"

# Retention: the dumps newest first; past the newest keep_min, those older than
# keep_days days go. Stale .partial files of a run that was killed go after a day.
n=0
for dump in $(ls -1r "$dir" | grep -E '^canteen-county-[0-9]{8}T[0-9]{6}Z\.dump$'); do
    n=$((n + 1))
    [ "$n" -le "$keep_min" ] && continue
    if [ -n "$(find "$dir/$dump" -maxdepth 0 -mtime +"$((keep_days - 1))")" ]; then
        rm -f "$dir/$dump"
        echo "canteen-county-backup: removed $dump (older than $keep_days days)"
    fi
done
find "$dir" -maxdepth 1 -name '.canteen-county-*.dump.partial' -mtime +0 -delete
