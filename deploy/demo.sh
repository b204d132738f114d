#!/usr/bin/env bash
# A guided walk through one task's lifecycle against a broker started with
# `make run`. Each step prints the command it runs, then its output.
set -euo pipefail

# Where make builds (the Makefile's CARGO_TARGET_DIR); `make demo` passes BIN.
BIN=${BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/tessera/target}/debug}
DEV_DIR=${DEV_DIR:-.tessera-dev}
TESSERA="$BIN/tessera --dev-dir $DEV_DIR"
TD=$(sed -n 's/^trust_domain = "\(.*\)"/\1/p' "$DEV_DIR/tesserad.toml")
CRM=https://api.example.com/crm
TASK="demo-$(date +%H%M%S)"

bold=$'\e[1m'; dim=$'\e[2m'; reset=$'\e[0m'
[ -t 1 ] || { bold=; dim=; reset=; }

step() { printf '\n%s== %s ==%s\n' "$bold" "$1" "$reset"; }
# Prints a command as a person would type it (arguments quoted for the shell).
show() {
  printf '%s$' "$dim"
  local a
  for a in "$@"; do
    case "$a" in
      '' | *[!A-Za-z0-9_./:=@%+,-]*) printf " '%s'" "${a//\'/\'\\\'\'}" ;;
      *) printf ' %s' "$a" ;;
    esac
  done
  printf '%s\n' "$reset"
}
# Prints a command line given as one string, verbatim.
show_line() { printf '%s$ %s%s\n' "$dim" "$1" "$reset"; }
pause() { if [ -t 0 ]; then read -rp "   (press Enter to continue)" _; fi; }

if [ ! -f "$DEV_DIR/tesserad.toml" ]; then
  echo "No dev setup in $DEV_DIR: start the broker first with 'make run' in another terminal." >&2
  exit 1
fi
# The CLI reads TESSERA_ENDPOINT; name the endpoint it actually tries.
ENDPOINT=${TESSERA_ENDPOINT:-https://127.0.0.1:7443}
if ! err=$($TESSERA --as api-gateway jwks 2>&1 >/dev/null); then
  echo "The broker does not answer on $ENDPOINT: start it with 'make run' in another terminal" >&2
  echo "(for another port: TESSERA_SERVER__LISTEN=127.0.0.1:PORT make run, and TESSERA_ENDPOINT=https://127.0.0.1:PORT make demo)." >&2
  echo "tessera said: $err" >&2
  exit 1
fi

step "1. The orchestrator starts a task: one agent, read-only CRM access, 15 minutes"
show tessera --as orchestrator task start --id "$TASK" --agent "spiffe://$TD/agent/researcher" --allow "$CRM crm.contacts.read crm.notes.read" --ttl 15m
$TESSERA --as orchestrator task start --id "$TASK" --agent "spiffe://$TD/agent/researcher" \
  --allow "$CRM crm.contacts.read crm.notes.read" --ttl 15m
pause

step "2. The agent asks for a 5-minute token to read contacts"
show_line 'TOKEN=$(tessera --as researcher token request --task '"$TASK"' --audience '"$CRM"' --scope crm.contacts.read --ttl 5m)'
TOKEN=$($TESSERA --as researcher token request --task "$TASK" --audience "$CRM" --scope crm.contacts.read --ttl 5m)
echo "   (the token is in \$TOKEN; it is a secret, so it is not printed)"
pause

step "3. A resource server decodes it and verifies the signature against the broker's JWKS"
show_line 'tessera --as api-gateway token inspect --verify --audience '"$CRM"' - <<<"$TOKEN"'
$TESSERA --as api-gateway token inspect --verify --audience "$CRM" - <<<"$TOKEN"
pause

step "4. Asking beyond the task's ceiling (write access) is refused"
show tessera --as researcher token request --task "$TASK" --audience "$CRM" --scope crm.contacts.write
$TESSERA --as researcher token request --task "$TASK" --audience "$CRM" --scope crm.contacts.write || true
pause

step "5. Introspection: the token is live"
show_line 'tessera --as api-gateway introspect - <<<"$TOKEN"'
$TESSERA --as api-gateway introspect - <<<"$TOKEN"
pause

step "6. The orchestrator completes the task: every grant of it is revoked"
show tessera --as orchestrator task complete "$TASK" --reason "demo finished"
$TESSERA --as orchestrator task complete "$TASK" --reason "demo finished"
pause

step "7. Introspection again: the token is dead, minutes before its expiry"
show_line 'tessera --as api-gateway introspect - <<<"$TOKEN"'
$TESSERA --as api-gateway introspect - <<<"$TOKEN"

printf '\n%sDone.%s Revocations are also streamed to verifiers: try\n  tessera --as api-gateway revocations watch\n(after make install; or %s)\n' "$bold" "$reset" "$BIN/tessera"
