#!/usr/bin/env bash
# Validates the lab itself (no nodeplane agent involved):
#  1. `scripts/testbed up --nodes-kernel-only`: every node forwards with the
#     kernel and flannel.1, so ICMP, TCP and UDP must work pod to pod on one
#     node, across nodes over VXLAN (the flannel.1 counters must move), to and
#     from the kernel node, and from the external client to the node IPs; the
#     servers must see the real client address (no NAT on the kernel path).
#  2. `scripts/testbed up` (nodeplane mode, agent not started): the kernel node
#     works, node-a/node-b pods are registered for the agent, and nothing
#     forwards between node-a's pods (ip_forward=0: only the dataplane may).
# Every lab is removed on exit; the script checks that no namespace is left.
# Usage (root): tests/lab/validate-lab.sh     (NODEPLANE_CNI=... to pick the plugin)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || {
    echo "validate-lab: must run as root" >&2
    exit 1
}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
P1="npk$$"
P1=${P1:0:12}
P2="npn$$"
P2=${P2:0:12}
cleanup() {
    scripts/testbed down --prefix "$P1" >/dev/null 2>&1 || true
    scripts/testbed down --prefix "$P2" >/dev/null 2>&1 || true
}
trap cleanup EXIT

fails=0
pass() { echo "ok   $*"; }
fail() {
    echo "FAIL $*"
    fails=$((fails + 1))
}
nt() { # NS ARGS... -> nettool inside NS
    local ns=$1
    shift
    ip netns exec "$ns" "$PY" tests/lab/nettool.py "$@"
}
expect_ok() { # description, command...
    local d=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$d: $(echo "$out" | tail -1)"; else fail "$d: $out"; fi
}
expect_answer() { # description, expected-prefix, command...
    local d=$1 want=$2 out
    shift 2
    if out=$("$@" 2>&1) && [[ "$out" == "$want"* ]]; then pass "$d: $out"; else fail "$d: got '$out', want '$want…'"; fi
}
expect_fail() {
    local d=$1 out
    shift
    if out=$("$@" 2>&1); then fail "$d: unexpectedly answered: $out"; else pass "$d: no answer (as expected)"; fi
}
tx_packets() { ip -n "$1" -j -s link show flannel.1 | "$PY" -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["packets"])'; }

echo "== kernel-only lab ($P1)"
scripts/testbed up --prefix "$P1" --nodes-kernel-only >/dev/null
eval "$(scripts/testbed env --prefix "$P1")"
if scripts/testbed status --prefix "$P1" >/dev/null; then pass "status: all namespaces and servers up"; else fail "status"; fi
vx_a=$(tx_packets "$NP_NS_A")
# from-pod  from-ip  to-pod  to-ip
while read -r from fip to tip what; do
    ns_var=NP_NS_${from^^}
    ns=${!ns_var}
    expect_ok "$what ping $from->$to" nt "$ns" ping -c 2 "$tip"
    expect_answer "$what tcp  $from->$to" "$to $fip:" nt "$ns" tcp "$tip" 8080 --line probe
    expect_answer "$what udp  $from->$to" "$to $fip:" nt "$ns" udp "$tip" 5353 --msg probe
    expect_answer "$what http $from->$to" "$to $fip:" nt "$ns" http "$tip" 8080
done <<EOF
a1 198.19.1.10 a2 198.19.1.11 same-node
b2 198.19.3.11 b1 198.19.3.10 same-node
a1 198.19.1.10 b1 198.19.3.10 cross-node
b2 198.19.3.11 a2 198.19.1.11 cross-node
a2 198.19.1.11 k1 198.19.2.10 to-kernel-node
k1 198.19.2.10 b2 198.19.3.11 from-kernel-node
EOF
vx_a2=$(tx_packets "$NP_NS_A")
if [ "$vx_a2" -gt "$vx_a" ]; then pass "node-a flannel.1 carried the cross-node traffic ($((vx_a2 - vx_a)) packets)"; else fail "node-a flannel.1 tx counter did not move"; fi
for ip in "$NP_IP_K" "$NP_IP_A" "$NP_IP_B"; do
    expect_ok "client ping node $ip" nt "$NP_NS_X" ping -c 1 "$ip"
done
# MTU: a 30 kB TCP line and a 1400-byte datagram across the overlay.
big=$(head -c 30000 /dev/zero | tr '\0' x)
if out=$(nt "$NP_NS_A1" tcp "$NP_IP_B1" 8080 --line "$big") && [ "${#out}" -gt 30000 ]; then pass "30 kB over TCP a1->b1"; else fail "30 kB over TCP a1->b1"; fi
med=$(head -c 1400 /dev/zero | tr '\0' y)
if out=$(nt "$NP_NS_A1" udp "$NP_IP_B1" 5353 --msg "$med") && [[ "$out" == "b1 "*"$med" ]]; then pass "1400-byte UDP a1->b1 (${#out}-byte answer)"; else fail "1400-byte UDP a1->b1"; fi
scripts/testbed down --prefix "$P1" >/dev/null
if ip netns list | grep -q "^$P1-"; then fail "namespaces of $P1 left after down"; else pass "down removed every $P1 namespace"; fi

echo "== nodeplane-mode lab ($P2), agent not running"
scripts/testbed up --prefix "$P2" >/dev/null
eval "$(scripts/testbed env --prefix "$P2")"
expect_answer "kernel node k1 reachable from node-k" "k1 " nt "$NP_NS_K" tcp "$NP_IP_K1" 8080
for f in "$NP_STATE_A/$NP_CID_A1"_eth0.json "$NP_STATE_A/$NP_CID_A2"_eth0.json \
    "$NP_STATE_B/$NP_CID_B1"_eth0.json "$NP_STATE_B/$NP_CID_B2"_eth0.json; do
    if [ -s "$f" ]; then pass "registered: $(basename "$f")"; else fail "missing registration $f"; fi
done
expect_answer "node-a reaches its own pod a1 (host route)" "a1 " nt "$NP_NS_A" tcp "$NP_IP_A1" 8080
expect_fail "a1->a2 without an agent (node-a does not forward)" nt "$NP_NS_A1" --timeout 1 udp "$NP_IP_A2" 5353
scripts/testbed down --prefix "$P2" >/dev/null
if ip netns list | grep -qE "^($P1|$P2)-"; then fail "namespaces left"; else pass "no lab namespace left"; fi

echo "== $fails failure(s)"
[ "$fails" -eq 0 ]
