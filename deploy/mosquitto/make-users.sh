#!/usr/bin/env bash
# Create the Mosquitto password file for chargebridge's users (see chargebridge.acl).
#
#   make-users.sh PASSWORD_FILE [USER[:PASSWORD]]...
#
# Without USER arguments it creates the three users of the ACL: chargebridge (gateway and
# charging service), monitor (read-only) and operator (commands). A user given without a
# password gets a random one, printed as `user:password` on stdout; keep them, only hashes
# are stored. Passwords never appear on a command line: mosquitto_passwd -U hashes a
# plaintext file written with mode 600 in place.
set -euo pipefail

if [ $# -lt 1 ] || [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
out=$1
shift
[ $# -gt 0 ] || set -- chargebridge monitor operator
command -v mosquitto_passwd >/dev/null || { echo "make-users.sh: mosquitto_passwd not found (apt-get install mosquitto)" >&2; exit 1; }

umask 077
tmp=$(mktemp "${out}.XXXXXX")
trap 'rm -f "$tmp"' EXIT
for spec in "$@"; do
    user=${spec%%:*}
    if [ "$spec" = "$user" ]; then
        password=$(openssl rand -base64 18 | tr -d '/+=\n')
        printf '%s:%s\n' "$user" "$password"
    else
        password=${spec#*:}
    fi
    case $user in
        ''|*[!A-Za-z0-9_.-]*) echo "make-users.sh: bad user name '$user'" >&2; exit 2 ;;
    esac
    [ -n "$password" ] || { echo "make-users.sh: empty password for $user" >&2; exit 2; }
    printf '%s:%s\n' "$user" "$password" >>"$tmp"
done
mosquitto_passwd -U "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "make-users.sh: wrote $out ($# users)" >&2
