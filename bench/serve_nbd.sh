#!/usr/bin/env bash
# Serve one existing raw file over BlockMirror's NBD server, for peer_bench.py's
# `--extra-nbd 'LABEL::bench/serve_nbd.sh {dst} {sock}[::EXPORT]'` hook.
#
#   serve_nbd.sh DST SOCK [BITMAPS]
#
# Starts the published service (BM_DLL, default /tmp/bm-publish/BlockMirror.Api.dll) with
# Storage:Root = dirname(DST), a private database, and Nbd:Listen = unix:SOCK.tmp; adds the
# node "tgt" on DST, BITMAPS (or $BM_BITMAPS, default 0) enabled dirty bitmaps b0..b(N-1)
# (granularity $BM_GRANULARITY, default 65536) and the writable export $BM_EXPORT (default
# "tgt") via REST; then renames SOCK.tmp to SOCK, so a client polling for SOCK only connects
# once the export exists. SIGTERM/SIGINT are forwarded to the service (which shuts down
# cleanly), after an optional report: with $BM_SERVE_REPORT set, one JSON line per stop with
# the node's bitmaps (name, count) is appended to that file.
# Optional: $BM_PIN (e.g. "taskset -c 1") prefixes the service command line.
# $BM_WARMUP_MB (default 256): before the socket appears, that many MiB of random data are
# written to, and read back from, a scratch node/export (then deleted), so the measured transfer
# runs on a warmed-up JIT (tier-1 code), as it would in a long-running service; 0 = measure the
# first transfer after start (cold JIT).
# $BM_CWD (default: the private state directory): the service's working directory. Without an
# appsettings.json next to the published binary the service's content root falls back to it,
# and the configuration reload watcher (inotify, recursive, IN_MODIFY included) watches it;
# BM_CWD=$(dirname DST), or the literal @image-dir, reproduces a content root that contains the
# image (see README).
set -uo pipefail

dst=${1:?usage: serve_nbd.sh DST SOCK [BITMAPS]}
sock=${2:?usage: serve_nbd.sh DST SOCK [BITMAPS]}
nbits=${3:-${BM_BITMAPS:-0}}
dll=${BM_DLL:-/tmp/bm-publish/BlockMirror.Api.dll}
export_name=${BM_EXPORT:-tgt}
gran=${BM_GRANULARITY:-65536}

[[ -f $dst ]] || { echo "serve_nbd.sh: $dst is not a file" >&2; exit 2; }
[[ -f $dll ]] || { echo "serve_nbd.sh: $dll not found (dotnet publish src/BlockMirror.Api -c Release -o $(dirname "$dll"))" >&2; exit 2; }
dst=$(readlink -f "$dst")
root=$(dirname "$dst")
name=$(basename "$dst")
state=$(mktemp -d "${TMPDIR:-/tmp}/serve_nbd.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
api="http://127.0.0.1:$port/api/v1"
rm -f "$sock" "$sock.tmp"

cwd=${BM_CWD:-$state}
[[ $cwd == @image-dir ]] && cwd=$root
cd "$cwd" || exit 2
# shellcheck disable=SC2086
${BM_PIN:-} dotnet "$dll" --Urls "http://127.0.0.1:$port" --Storage:Root "$root" \
    --ConnectionStrings:BlockMirror "Data Source=$state/bm.db" --Nbd:Listen "unix:$sock.tmp" \
    --Logging:LogLevel:Default Warning --Logging:LogLevel:Microsoft.AspNetCore Warning \
    --Logging:LogLevel:Microsoft.EntityFrameworkCore Warning >"$state/service.log" 2>&1 &
pid=$!

stopping=0
stop() {
    stopping=1
    if [[ -n ${BM_SERVE_REPORT:-} ]]; then
        bm=$(curl -sf "$api/nodes/tgt/bitmaps" 2>/dev/null || echo '{"items":[]}')
        printf '{"dst":"%s","bitmaps":%s}\n' "$name" "$(jq -c '[.items[] | {name, count}]' <<<"$bm" 2>/dev/null || echo '[]')" \
            >>"$BM_SERVE_REPORT"
    fi
    kill -TERM "$pid" 2>/dev/null
}
cleanup() {
    rm -f "$sock" "$sock.tmp"
    rm -rf "$state"
}
trap stop TERM INT

fail() {
    echo "serve_nbd.sh: $*" >&2
    tail -20 "$state/service.log" >&2
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    cleanup
    exit 1
}

post() {  # post PATH JSON
    local out
    out=$(curl -sS -w '\n%{http_code}' -X POST -H 'Content-Type: application/json' "$api$1" -d "$2") || return 1
    [[ ${out##*$'\n'} == 2* ]] || { echo "POST $1 -> $out" >&2; return 1; }
}

for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || fail "service exited during start"
    [[ $stopping == 1 ]] && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 || fail "service not healthy"

post /nodes "{\"name\":\"tgt\",\"driver\":\"raw\",\"path\":\"$name\"}" || fail "cannot add node"
for ((i = 0; i < nbits; i++)); do
    post /nodes/tgt/bitmaps "{\"name\":\"b$i\",\"granularity\":$gran}" || fail "cannot add bitmap b$i"
done
warm_mb=${BM_WARMUP_MB:-256}
if ((warm_mb > 0)); then
    wname=".serve_nbd_warmup.$$.raw"
    post /nodes "{\"name\":\"warmup\",\"driver\":\"raw\",\"path\":\"$wname\",\"create\":{\"size\":$((warm_mb << 20))}}" \
        || fail "cannot add warm-up node"
    post /exports '{"name":"warmup","node":"warmup","writable":true}' || fail "cannot add warm-up export"
    wuri="nbd+unix:///warmup?socket=$sock.tmp"
    for _ in 1 2; do
        head -c $((warm_mb << 20)) /dev/urandom | nbdcopy --connections=1 --threads=1 --request-size=1048576 \
            --requests=16 --flush - "$wuri" || fail "warm-up write failed"
        nbdcopy --connections=1 --threads=1 --request-size=1048576 --requests=16 "$wuri" null: \
            || fail "warm-up read failed"
    done
    curl -sf -X DELETE "$api/exports/warmup" >/dev/null || fail "cannot remove warm-up export"
    curl -sf -X DELETE "$api/nodes/warmup?deleteImage=true" >/dev/null || fail "cannot remove warm-up node"
    rm -f "$root/$wname"
fi
post /exports "{\"name\":\"$export_name\",\"node\":\"tgt\",\"writable\":true}" || fail "cannot add export"
mv "$sock.tmp" "$sock" || fail "cannot rename $sock.tmp"

# wait returns early when a trapped signal arrives; keep waiting until the service is gone.
while kill -0 "$pid" 2>/dev/null; do
    wait "$pid"
done
wait "$pid" 2>/dev/null
rc=$?
cleanup
[[ $stopping == 1 ]] && exit 0
exit "$rc"
