#!/usr/bin/env bash
# Tests the Debian package as far as a machine without systemd as PID 1 allows: it builds
# (./scripts/package.sh) and holds what it should (dpkg -c); it installs, reinstalls, removes
# and purges cleanly in scratch roots (dpkg --root, maintainer scripts chrootless), with the
# ipvsadm names linked only where no real ipvsadm is; `systemd-analyze verify` passes on its
# units and their exposure stays "OK"; `systemctl enable ipvsadm` enables the compatibility
# unit; every man page renders without a warning (man -l); the bash completions load and
# complete; the installed binaries answer as the links' names say, read the shipped default
# configuration, and log journald's way when their stderr is the journal. Run as root;
# KEEP=1 keeps the scratch directory for a look after a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "test-package: FAIL: $*" >&2
    exit 1
}
pass() { echo "test-package: ok: $*"; }

work=$(mktemp -d /tmp/uvs-test-package.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

deb=$(./scripts/package.sh)
[ -f "$deb" ] || fail "package.sh printed $deb, which is not a file"

# --- Contents --------------------------------------------------------------------------
dpkg-deb --field "$deb" Package Version Depends > "$work/fields"
grep -q '^Package: uvs$' "$work/fields" || fail "Package field: $(cat "$work/fields")"
grep -q '^Depends: libc6 (>= 2\.[0-9]*), libgcc-s1$' "$work/fields" ||
    fail "Depends field: $(grep Depends "$work/fields")"
dpkg -c "$deb" | awk '{print $1, $2, $6}' > "$work/contents"
expect() { # MODE OWNER PATH
    grep -qxF -- "$1 $2 ./$3" "$work/contents" || fail "dpkg -c has no $1 $2 ./$3"
}
expect -rwxr-xr-x root/root usr/sbin/uvs
expect -rwxr-xr-x root/root usr/sbin/uvsadm
for unit in uvs.service uvs@.service uvs-ipvsadm.service; do
    expect -rw-r--r-- root/root "lib/systemd/system/$unit"
done
for page in uvs uvs-run uvs-health uvs-status uvs-trace uvs-capture uvs-doctor uvs-lab uvs-tun-endpoint uvsadm; do
    expect -rw-r--r-- root/root "usr/share/man/man8/$page.8.gz"
done
expect -rw-r--r-- root/root usr/share/bash-completion/completions/uvs
expect -rw-r--r-- root/root usr/share/bash-completion/completions/uvsadm
expect -rw-r--r-- root/root usr/share/zsh/vendor-completions/_uvsadm
expect -rw-r--r-- root/root usr/share/fish/vendor_completions.d/uvsadm.fish
expect -rw-r--r-- root/root etc/default/uvs
expect -rw-r--r-- root/root etc/uvs/uvs.toml
expect -rw-r--r-- root/root usr/share/doc/uvs/copyright
expect -rw-r--r-- root/root usr/share/doc/uvs/examples/grafana/uvs-dashboard.json
expect -rw-r--r-- root/root usr/share/doc/uvs/examples/keepalived/keepalived.conf
expect -rw-r--r-- root/root usr/share/doc/uvs/examples/ldirectord/ldirectord.cf
if grep -v '^d' "$work/contents" | grep -qv ' root/root '; then
    fail "files not owned by root: $(grep -v ' root/root ' "$work/contents" | head -3)"
fi
dpkg-deb --ctrl-tarfile "$deb" | tar -tf - | sort > "$work/control-files"
for f in ./conffiles ./control ./md5sums ./postinst ./postrm ./prerm; do
    grep -qxF "$f" "$work/control-files" || fail "control archive has no $f"
done
pass "dpkg -c: binaries, units, man pages, completions, conffiles, examples"

# --- Scratch roots ---------------------------------------------------------------------
# A merged-/usr root as Debian 12 has. The maintainer scripts run chrootless against it
# (DPKG_ROOT), so they see its files, not the machine's. A stand-in base package owns the
# system directories the uvs package also ships into (/usr/sbin, /etc/default, …), as
# Debian's base packages do, so removing uvs leaves them as it must.
dpkg_in() {
    local r="$1"
    shift
    dpkg --root="$r" --force-script-chrootless --force-depends --log=/dev/null "$@"
}
base="$work/base"
mkdir -p "$base/DEBIAN"
printf 'Package: uvs-test-base\nVersion: 1\nArchitecture: all\nMaintainer: test <test@invalid>\nDescription: system directories of a scratch root\n' \
    > "$base/DEBIAN/control"
dpkg -c "$deb" | awk '$1 ~ /^d/ { print $6 }' | grep -v -e '/uvs/$' -e '/uvs/.' |
    while read -r dir; do mkdir -p "$base/$dir"; done
mkdir -p "$base/etc/alternatives" "$base/etc/systemd/system" "$base/var/log"
dpkg-deb --root-owner-group --build "$base" "$work/base.deb" > /dev/null
new_root() {
    local r="$1"
    mkdir -p "$r/var/lib/dpkg/info" "$r/var/lib/dpkg/updates" "$r/var/lib/dpkg/triggers" \
        "$r/usr/sbin" "$r/usr/bin" "$r/usr/lib"
    ln -s usr/sbin "$r/sbin"
    ln -s usr/bin "$r/bin"
    ln -s usr/lib "$r/lib"
    touch "$r/var/lib/dpkg/status" "$r/var/lib/dpkg/available"
    dpkg_in "$r" -i "$work/base.deb" > /dev/null || fail "base package in $r"
}
tree_of() { # everything in a root but dpkg's database and update-alternatives' log
    (cd "$1" && find . -path ./var/lib/dpkg -prune -o -path ./var/log/alternatives.log -prune \
        -o -print | sort)
}

root="$work/root"
new_root "$root"
tree_of "$root" > "$work/before"
dpkg_in "$root" -i "$deb" > "$work/install.log" 2>&1 || fail "install: $(cat "$work/install.log")"
[ -x "$root/usr/sbin/uvs" ] && [ -x "$root/usr/sbin/uvsadm" ] || fail "binaries not installed"
link_chain() { # NAME TARGET: /usr/sbin/NAME -> /etc/alternatives/NAME -> TARGET
    [ "$(readlink "$root/usr/sbin/$1")" = "/etc/alternatives/$1" ] ||
        fail "/usr/sbin/$1 is not the alternatives link: $(ls -l "$root/usr/sbin/$1" 2>&1)"
    [ "$(readlink "$root/etc/alternatives/$1")" = "$2" ] ||
        fail "alternative $1 does not point to $2: $(ls -l "$root/etc/alternatives/$1" 2>&1)"
}
for name in ipvsadm ipvsadm-save ipvsadm-restore; do
    link_chain "$name" /usr/sbin/uvsadm
done
[ "$(readlink "$root/usr/lib/systemd/system/ipvsadm.service")" = /etc/alternatives/ipvsadm.service ] &&
    [ "$(readlink "$root/etc/alternatives/ipvsadm.service")" = /lib/systemd/system/uvs-ipvsadm.service ] ||
    fail "ipvsadm.service is not the alias of uvs-ipvsadm.service"
for page in ipvsadm ipvsadm-save ipvsadm-restore; do
    [ "$(readlink "$root/usr/share/man/man8/$page.8.gz")" = "/etc/alternatives/$page.8.gz" ] &&
        [ "$(readlink "$root/etc/alternatives/$page.8.gz")" = /usr/share/man/man8/uvsadm.8.gz ] ||
        fail "man $page is not uvsadm's page"
done
# The tutorials' `systemctl enable ipvsadm` enables the unit behind the alias.
systemctl --root="$root" enable ipvsadm.service > "$work/enable.log" 2>&1 ||
    fail "systemctl enable ipvsadm: $(cat "$work/enable.log")"
[ "$(systemctl --root="$root" is-enabled uvs-ipvsadm.service)" = enabled ] ||
    fail "systemctl enable ipvsadm did not enable uvs-ipvsadm.service"
pass "install: ipvsadm, ipvsadm-save, ipvsadm-restore, their man pages and ipvsadm.service are uvs's; systemctl enable ipvsadm works"

# Reinstalling (an upgrade to the same version) keeps everything in place.
dpkg_in "$root" -i "$deb" > "$work/reinstall.log" 2>&1 || fail "reinstall: $(cat "$work/reinstall.log")"
for name in ipvsadm ipvsadm-save ipvsadm-restore; do
    link_chain "$name" /usr/sbin/uvsadm
done
grep -q "real ipvsadm" "$work/reinstall.log" && fail "reinstall took uvs's own links for a real ipvsadm"
pass "reinstall keeps the links"

# The installed binaries, invoked under the links' names (what the links pass as argv[0]).
uvsadm="$root/usr/sbin/uvsadm"
out=$( (exec -a ipvsadm-save "$uvsadm" -c) 2>&1) && fail "ipvsadm-save -c succeeded: $out"
[ "$out" = "Illegal 'connection' option with the 'save' command" ] ||
    fail "ipvsadm-save is not ipvsadm -S: $out"
out=$( (exec -a ipvsadm-restore "$uvsadm" -n) 2>&1) && fail "ipvsadm-restore -n succeeded: $out"
[ "$out" = "Illegal 'numeric' option with the 'restore' command" ] ||
    fail "ipvsadm-restore is not ipvsadm -R: $out"
(exec -a /sbin/ipvsadm "$uvsadm" -h) | grep -q '^  /sbin/ipvsadm -S \[-n\]$' ||
    fail "ipvsadm -h does not name itself as invoked"
# The shipped configuration is accepted: uvs gets as far as the (missing) interface.
out=$("$root/usr/sbin/uvs" run --config "$root/etc/uvs/uvs.toml" --interface uvs-nosuch0 --metrics off 2>&1) &&
    fail "uvs run with a missing interface succeeded"
case "$out" in *"interface uvs-nosuch0 does not exist"*) ;; *) fail "default config: $out" ;; esac
# journald: with stderr as the journal stream, '<priority>message' and no timestamp.
printf 'vrrp_instance VI_1 {\n state SLAVE\n interface lo\n virtual_router_id 9\n virtual_ipaddress {\n 10.9.9.9\n }\n' \
    > "$work/keepalived.conf"
(
    exec 2> "$work/journal"
    JOURNAL_STREAM=$(stat -c '%d:%i' "$work/journal") "$root/usr/sbin/uvs" run \
        --keepalived "$work/keepalived.conf" --interface uvs-nosuch0 --metrics off || true
)
grep -qx "<4>$work/keepalived.conf:2: (VI_1) unknown state 'SLAVE', defaulting to BACKUP" "$work/journal" ||
    fail "journald line: $(cat "$work/journal")"
grep -q '^<3>uvs: interface uvs-nosuch0 does not exist' "$work/journal" ||
    fail "journald error line: $(cat "$work/journal")"
grep -q '^\[' "$work/journal" && fail "a timestamped line under journald: $(cat "$work/journal")"
# ipvsadm.service's command, as systemd runs it ($$ is $), on this root's files: it finds
# the rules ipvsadm-save wrote, host names included, and runs uvs with them.
cmd=$(sed -n 's/^ExecStart=\/bin\/sh -c .\(.*\).$/\1/p' "$root/usr/lib/systemd/system/uvs-ipvsadm.service" |
    sed -e 's/\$\$/$/g' -e "s|/etc/|$root/etc/|g" -e "s|/usr/sbin/uvs |$root/usr/sbin/uvs |")
[ -n "$cmd" ] || fail "no ExecStart in uvs-ipvsadm.service"
out=$(sh -c "$cmd" 2>&1) && fail "uvs-ipvsadm without rules succeeded"
[ "$out" = "no $root/etc/sysconfig/ipvsadm or $root/etc/ipvsadm.rules" ] || fail "uvs-ipvsadm without rules: $out"
printf -- '-A -t localhost:http -s rr -p\n-a -t localhost:http -r 127.0.0.2 -g\n' > "$root/etc/ipvsadm.rules"
out=$(UVS_IPVSADM_ARGS="--interface uvs-nosuch0 --metrics off" sh -c "$cmd" 2>&1) &&
    fail "uvs-ipvsadm with a missing interface succeeded"
case "$out" in *"interface uvs-nosuch0 does not exist"*) ;; *) fail "uvs-ipvsadm: $out" ;; esac
rm "$root/etc/ipvsadm.rules"
pass "installed binaries: link names, default config, ipvsadm.service's command, journald lines"

# --- Units -----------------------------------------------------------------------------
# systemd-analyze verify resolves dependencies, executables and man pages inside a root:
# the package's files over this machine's systemd units, /bin/kill and /bin/sh.
vroot="$work/verify"
mkdir -p "$vroot/lib/systemd" "$vroot/bin"
cp -a /lib/systemd/system "$vroot/lib/systemd/"
cp /bin/kill /bin/sh "$vroot/bin/"
dpkg-deb -x "$deb" "$vroot"
ln -s uvs@.service "$vroot/lib/systemd/system/uvs@lab.service"
for unit in uvs.service uvs@lab.service uvs-ipvsadm.service; do
    if ! out=$(cd "$vroot" && MANPATH="$vroot/usr/share/man" \
        systemd-analyze verify --root="$vroot" "lib/systemd/system/$unit" 2>&1) || [ -n "$out" ]; then
        fail "systemd-analyze verify $unit: $out"
    fi
    exposure=$(systemd-analyze security --offline=yes --root="$vroot" "$unit" 2>/dev/null |
        sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
    [ -n "$exposure" ] || fail "systemd-analyze security printed no exposure for $unit"
    awk -v e="$exposure" 'BEGIN { exit !(e < 5.0) }' ||
        fail "$unit exposure $exposure is not below 5.0"
done
pass "systemd-analyze verify: uvs.service, uvs@lab.service, uvs-ipvsadm.service (exposure $exposure)"

# --- Man pages and completions ---------------------------------------------------------
n=0
for page in "$root"/usr/share/man/man8/*.8.gz; do
    # ipvsadm.8.gz: the alternatives link to uvsadm.8.gz, absolute, so outside this root.
    [ -L "$page" ] && continue
    warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" 2>&1 > "$work/page") ||
        fail "man -l $page failed: $warnings"
    [ -z "$warnings" ] || fail "man -l $page: $warnings"
    grep -q '^NAME' "$work/page" && grep -q '^SYNOPSIS' "$work/page" ||
        fail "man -l $page has no NAME/SYNOPSIS"
    n=$((n + 1))
done
LC_ALL=C.UTF-8 MANWIDTH=100 man -l "$root/usr/share/man/man8/uvsadm.8.gz" |
    grep -q -- '-p, --persistent \[<timeout>\]' || fail "uvsadm.8 does not document -p"
pass "man -l: $n pages render without warnings"

completions="$root/usr/share/bash-completion/completions"
out=$(bash -c "source '$completions/uvsadm' && complete -p uvsadm &&
    COMP_WORDS=(uvsadm -s ''); COMP_CWORD=2; _uvsadm uvsadm '' -s; echo \"\${COMPREPLY[*]}\"") ||
    fail "bash completion for uvsadm does not load: $out"
case "$out" in *"-F _uvsadm uvsadm"*"rr wrr lc wlc"*) ;; *) fail "uvsadm -s completion: $out" ;; esac
out=$(bash -c "source '$completions/uvs' && COMP_WORDS=(uvs ru); COMP_CWORD=1; _uvs uvs ru uvs;
    echo \"\${COMPREPLY[*]}\"") || fail "bash completion for uvs does not load: $out"
[ "$out" = run ] || fail "uvs ru<TAB> completes to '$out'"
pass "bash completions load and complete"

# --- Remove and purge ------------------------------------------------------------------
systemctl --root="$root" disable ipvsadm.service > /dev/null 2>&1
dpkg_in "$root" -r uvs > "$work/remove.log" 2>&1 || fail "remove: $(cat "$work/remove.log")"
for name in ipvsadm ipvsadm-save ipvsadm-restore; do
    [ -e "$root/usr/sbin/$name" ] || [ -L "$root/usr/sbin/$name" ] &&
        fail "remove left /usr/sbin/$name"
done
[ -e "$root/usr/sbin/uvs" ] && fail "remove left /usr/sbin/uvs"
[ -f "$root/etc/uvs/uvs.toml" ] || fail "remove took the conffile /etc/uvs/uvs.toml"
dpkg_in "$root" --purge uvs > "$work/purge.log" 2>&1 || fail "purge: $(cat "$work/purge.log")"
tree_of "$root" > "$work/after"
diff -u "$work/before" "$work/after" > "$work/left" || fail "purge left files: $(cat "$work/left")"
pass "remove drops the links and keeps the conffiles; purge leaves the root as it was"

# --- A real ipvsadm keeps its names ----------------------------------------------------
root="$work/real"
new_root "$root"
printf '#!/bin/sh\necho real ipvsadm\n' > "$root/usr/sbin/ipvsadm"
chmod 755 "$root/usr/sbin/ipvsadm"
dpkg_in "$root" -i "$deb" > "$work/real.log" 2>&1 || fail "install beside ipvsadm: $(cat "$work/real.log")"
[ "$("$root/usr/sbin/ipvsadm")" = "real ipvsadm" ] || fail "the real ipvsadm was replaced"
for name in ipvsadm-save ipvsadm-restore ipvsadm.service; do
    [ -e "$root/etc/alternatives/$name" ] || [ -L "$root/etc/alternatives/$name" ] &&
        fail "$name linked to uvs beside a real ipvsadm"
done
grep -q '/usr/sbin/ipvsadm is a real ipvsadm' "$work/real.log" || fail "no notice: $(cat "$work/real.log")"
# A real ipvsadm installed after uvs: its file replaces uvs's link; uvs's next configure
# drops its registrations and leaves the real files alone.
root="$work/later"
new_root "$root"
dpkg_in "$root" -i "$deb" > /dev/null 2>&1 || fail "install in $root"
rm "$root/usr/sbin/ipvsadm"
printf '#!/bin/sh\necho real ipvsadm\n' > "$root/usr/sbin/ipvsadm"
chmod 755 "$root/usr/sbin/ipvsadm"
dpkg_in "$root" -i "$deb" > "$work/later.log" 2>&1 || fail "reinstall after ipvsadm: $(cat "$work/later.log")"
[ "$("$root/usr/sbin/ipvsadm")" = "real ipvsadm" ] || fail "the later real ipvsadm was replaced"
[ -e "$root/etc/alternatives/ipvsadm-save" ] && fail "ipvsadm-save still uvs's beside a real ipvsadm"
pass "a real ipvsadm, installed before or after, keeps ipvsadm, ipvsadm-save and ipvsadm-restore"

echo "test-package: all package checks passed"
