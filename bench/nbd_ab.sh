#!/usr/bin/env bash
# A/B of NBD write cost: nbdcopy of a cached image into a fresh sparse file served by each
# server given, interleaved, caches dropped before each run. Prints wall time and the server's
# user/system CPU (ticks of 1/100 s) per run. Needs root (drop_caches), nbdcopy, bc.
#
#   bench/nbd_ab.sh [--reps N] [--requests R] SRC SERVER...
#
# SERVER is a published BlockMirror.Api.dll (served through bench/serve_nbd.sh), or "nbdkit"
# (nbdkit's file plugin; "nbdkit-t1" for one thread), or "qemu-nbd".
set -uo pipefail
reps=3; reqs=16
while [[ ${1:-} == --* ]]; do
    case $1 in
        --reps) reps=$2; shift 2 ;;
        --requests) reqs=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
src=$(readlink -f "${1:?usage: nbd_ab.sh [--reps N] [--requests R] SRC SERVER...}"); shift
here=$(dirname "$(readlink -f "$0")")
work=$(mktemp -d "${TMPDIR:-/tmp}/nbd_ab.XXXXXX")
trap 'rm -rf "$work"' EXIT
dst=$work/dst.img
sock=$work/s.sock

run_one() {
    local server=$1 pid spid uri
    rm -f "$dst" "$sock"; truncate -s "$(stat -c %s "$src")" "$dst"
    case $server in
        nbdkit|nbdkit-t1)
            local threads=(); [[ $server == nbdkit-t1 ]] && threads=(-t 1)
            nbdkit "${threads[@]}" -f -U "$sock" file "$dst" & spid=$!; pid=$spid; uri="nbd+unix:///?socket=$sock" ;;
        qemu-nbd)
            qemu-nbd -f raw -t -x tgt --socket="$sock" "$dst" & spid=$!; pid=$spid; uri="nbd+unix:///tgt?socket=$sock" ;;
        *)
            BM_DLL=$server BM_WARMUP_MB=256 bash "$here/serve_nbd.sh" "$dst" "$sock" 0 >"$work/serve.log" 2>&1 & spid=$!
            uri="nbd+unix:///tgt?socket=$sock" ;;
    esac
    for _ in $(seq 1 600); do [[ -S $sock ]] && break; sleep 0.1; done
    [[ -z ${pid:-} ]] && pid=$(pgrep -f "dotnet $server" | head -1)
    sync; echo 3 > /proc/sys/vm/drop_caches; cat "$src" > /dev/null
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    local t0 t1; t0=$(date +%s.%N)
    nbdcopy --connections=1 --threads=1 --request-size=1048576 --requests="$reqs" --flush "$src" "$uri"
    t1=$(date +%s.%N)
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    printf '%-50s wall %6.3f s  server user %3d  sys %3d ticks\n' "$server" "$(echo "$t1 - $t0" | bc)" $((u1 - u0)) $((s1 - s0))
    kill "$spid"; wait "$spid" 2>/dev/null
}

for _ in $(seq 1 "$reps"); do
    for server in "$@"; do run_one "$server"; done
done
