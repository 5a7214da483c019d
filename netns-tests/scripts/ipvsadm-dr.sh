#!/bin/bash
# An ipvsadm lab script: the DR case in the shape of the Linux kernel's IPVS selftest
# (tools/testing/selftests/net/netfilter/ipvs.sh, test_dr + test_service), written for
# ipvsadm. uvs's test runs it unmodified with `ipvsadm` on PATH linked to uvsadm.
#
# usage: ipvsadm-dr.sh CLIENT_NS DIRECTOR_NS SERVER_NS VIP RIP PORT
set -u
ns0=$1 ns1=$2 ns2=$3 vip_v4=$4 rip_v4=$5 port=$6
infile=$(mktemp) outfile=$(mktemp)
trap 'rm -f "$infile" "$outfile"' EXIT
dd if=/dev/urandom of="$infile" bs=32 count=1 status=none

ip netns exec "$ns1" ipvsadm -A -t "${vip_v4}:${port}" -s rr || exit 1
ip netns exec "$ns1" ipvsadm -a -t "${vip_v4}:${port}" -r "${rip_v4}:${port}" || exit 1
ip netns exec "$ns1" ipvsadm -Ln

ip netns exec "$ns2" timeout 5 socat -u -4 TCP-LISTEN:"${port}",reuseaddr STDOUT > "$outfile" &
server_pid=$!
sleep 0.2
ip netns exec "$ns0" timeout 2 socat -u -4 STDIN TCP:"${vip_v4}":"${port}" < "$infile"
wait "$server_pid"
if cmp "$infile" "$outfile"; then
  echo "DR data transfer: PASS"
  exit 0
fi
echo "DR data transfer: FAIL"
exit 1
