#!/bin/sh
# Installs the monitor binary and its systemd unit under a root directory (default /).
# Running it again with the same arguments leaves the same files.
set -eu

usage() {
    cat <<'EOF'
usage: deploy/install.sh --binary PATH [--root DIR]

Installs PATH as DIR/usr/local/bin/monitor (mode 0755) and deploy/systemd/monitor.service as
DIR/etc/systemd/system/monitor.service (mode 0644). DIR defaults to /; it must exist.
Build the binary with `cargo xtask build` (target/release/monitor).

Then, on the host itself:
  systemctl daemon-reload && systemctl enable --now monitor
EOF
}

fail() {
    echo "install.sh: $*" >&2
    exit 1
}

usage_error() {
    echo "install.sh: $*" >&2
    usage >&2
    exit 2
}

root=/
binary=
while [ $# -gt 0 ]; do
    case $1 in
        --root | --binary)
            [ $# -ge 2 ] || usage_error "$1 needs a value"
            [ -n "$2" ] || usage_error "$1 needs a non-empty value"
            if [ "$1" = --root ]; then root=$2; else binary=$2; fi
            shift 2
            ;;
        --root=*) root=${1#--root=}; shift ;;
        --binary=*) binary=${1#--binary=}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage_error "unknown argument: $1" ;;
    esac
done

[ -n "$binary" ] || usage_error "--binary is required"
[ -n "$root" ] || usage_error "--root needs a non-empty value"
[ -f "$binary" ] || fail "--binary $binary: not a file"
[ -r "$binary" ] || fail "--binary $binary: not readable"
[ -d "$root" ] || fail "--root $root: not a directory"

unit=$(dirname "$0")/systemd/monitor.service
[ -f "$unit" ] || fail "$unit not found: run install.sh from its place in the repository"

# Copies $1 to $2 with mode $3: a temporary file beside $2 renamed over it, so that a running
# binary is replaced, never rewritten in place.
put() {
    mkdir -p "$(dirname "$2")"
    tmp=$2.install-tmp.$$
    trap 'rm -f "$tmp"' EXIT
    cp "$1" "$tmp"
    chmod "$3" "$tmp"
    mv -f "$tmp" "$2"
    trap - EXIT
    echo "installed $2"
}

root=${root%/}
put "$binary" "$root/usr/local/bin/monitor" 0755
put "$unit" "$root/etc/systemd/system/monitor.service" 0644

if [ -z "$root" ]; then
    echo "next: systemctl daemon-reload && systemctl enable --now monitor"
fi
