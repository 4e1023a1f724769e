#!/usr/bin/env bash
# The terminal's main job on its embedded defaults, on a fresh Debian / Pi OS machine:
# set up (Debian packages, .venv), then run a simulated canteen and the real daemon:
#   - hw-sim issuer: an issuer, 40 cadres with phone wallets, a card roster (once, in $RUN/population)
#   - hw-sim camera: an MJPEG camera on 127.0.0.1:8766 that the daemon reads like a real one
#   - hw-sim card-reader: an RDM6300 reader on a pty linked at $RUN/reader
#   - canteen-county serve: the reference county server on https://127.0.0.1:8443 (its CA and
#     data in $RUN/county); the terminal is registered and provisioned against it once
#   - canteen-terminal run: the daemon (SQLite ledger and trust store in $RUN/state), its screen
#     at a printed local address, until Ctrl-C
# Environment: CANTEEN_RUN (default ./run-demo), CANTEEN_SETUP=skip (use the current Python
# and PYTHONPATH instead of setting up .venv; the tests do this), CANTEEN_SCREEN_PORT (8765).
set -euo pipefail
cd "$(dirname "$0")/.."
TOP=$(pwd)

if [ "${CANTEEN_SETUP:-}" = "skip" ]; then
  PY=${PYTHON:-python3}
else
  bash scripts/setup.sh
  PY="$TOP/.venv/bin/python"
fi
RUN=$(realpath -m "${CANTEEN_RUN:-run-demo}")
SCREEN_PORT=${CANTEEN_SCREEN_PORT:-8765}
CAMERA_PORT=${CANTEEN_CAMERA_PORT:-8766}
COUNTY_PORT=${CANTEEN_COUNTY_PORT:-8443}
mkdir -p "$RUN"

hwsim() { "$PY" -m hwsim.cli "$@"; }
terminal() { "$PY" -m terminal.commands.main "$@"; }
county() { "$PY" -m county.cli "$@"; }

# Each port must be free before anything starts: one line and exit status 2 instead of a
# server's "Address already in use" traceback half-way through the start.
port_free() {
  "$PY" - "$1" <<'PYEOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PYEOF
}
for spec in "$SCREEN_PORT:the screen:CANTEEN_SCREEN_PORT" "$CAMERA_PORT:the simulated camera:CANTEEN_CAMERA_PORT" \
            "$COUNTY_PORT:the county server:CANTEEN_COUNTY_PORT"; do
  IFS=: read -r port what variable <<<"$spec"
  if ! port_free "$port"; then
    echo "run-terminal.sh: error: port $port on 127.0.0.1 ($what) is taken by another program (an earlier run still going?); stop it (\`ss -ltnp 'sport = :$port'\` shows which) or choose another port with $variable=PORT" >&2
    exit 2
  fi
done

if [ ! -f "$RUN/population/trust.json" ]; then
  hwsim issuer --out "$RUN/population" --cadres 40 --units demo-unit,visiting-bureau \
    --cards-fraction 0.3 --seed demo >/dev/null
fi

cat >"$RUN/terminal.toml" <<EOF
# Written by scripts/run-terminal.sh: the embedded defaults, pointed at the simulators.
[terminal]
id = "demo-terminal"
state_dir = "state"
language = "zh"

[canteen]
id = "demo-canteen"
name = "示例机关食堂 (simulated)"
units = ["demo-unit"]

# A simulated canteen serves all day so that a code shown at any hour gets a verdict;
# a real canteen keeps the embedded breakfast, lunch and dinner windows.
[[meals]]
name = "lunch"
start = "00:00"
end = "23:59"
price_own_fen = 1000
price_visitor_fen = 1500

[display]
port = $SCREEN_PORT
staff_pin = "2468"

[camera]
source = "http://127.0.0.1:$CAMERA_PORT/stream.mjpg"
fps = 15

[reader]
port = "$RUN/reader"
kind = "rdm6300"

[sync]
interval_s = 30
jitter_s = 5
EOF

# Every child is started as "$PY" itself (not through a shell function, which would put a
# subshell between), so $! is the process to stop. SIGTERM or SIGINT to this script stops
# them all through the EXIT trap and waits for them: the daemon closes its ledger, and
# every port is free again when the script has exited.
pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

"$PY" -m hwsim.cli camera --port "$CAMERA_PORT" >"$RUN/camera.log" 2>&1 &
pids+=($!)
"$PY" -m hwsim.cli card-reader --kind rdm6300 --link "$RUN/reader" >"$RUN/reader.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  [ -e "$RUN/reader" ] && break
  sleep 0.1
done

[ -d "$RUN/county" ] || county ca init --data "$RUN/county" >/dev/null
"$PY" -m county.cli serve --data "$RUN/county" --port "$COUNTY_PORT" >"$RUN/county.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 150); do
  (exec 3<>"/dev/tcp/127.0.0.1/$COUNTY_PORT") 2>/dev/null && break
  sleep 0.1
done
if [ ! -f "$RUN/state/county.json" ]; then
  code=$(county terminal add --data "$RUN/county" --canteen demo-canteen --terminal demo-terminal | tail -n 1)
  terminal provision --state "$RUN/state" --server "https://127.0.0.1:$COUNTY_PORT" --code "$code" >/dev/null
fi

terminal lists install --config "$RUN/terminal.toml" --issuers "$RUN/population/trust.json" \
  --revocations "$RUN/population/revoked.json" --roster "$RUN/population/roster.csv" >/dev/null

wallet=$(ls "$RUN/population/wallets" | head -n 1)
card=$(sed -n '2p' "$RUN/population/roster.csv" | cut -d, -f1)
cat <<EOF

Canteen terminal (simulated canteen) starting.
  screen:        http://127.0.0.1:$SCREEN_PORT/   (staff PIN 2468)
  state:         $RUN/state   (ledger.sqlite, trust.sqlite)
  county server: https://127.0.0.1:$COUNTY_PORT   (data in $RUN/county)
From another shell, in $TOP:
  show a code:   .venv/bin/hw-sim camera show --url http://127.0.0.1:$CAMERA_PORT --wallet $RUN/population/wallets/$wallet
  swipe a card:  .venv/bin/hw-sim card-reader swipe --link $RUN/reader --uid $card
  status:        .venv/bin/canteen-terminal status --config $RUN/terminal.toml
  the ledger:    .venv/bin/canteen-terminal ledger verify $RUN/state/ledger.sqlite
  the county:    .venv/bin/canteen-county report --data $RUN/county --text
Stop with Ctrl-C.

EOF
"$PY" -m terminal.commands.main run --config "$RUN/terminal.toml" &
daemon=$!
pids+=("$daemon")
set +e
wait "$daemon"
status=$?
set -e
exit "$status"
