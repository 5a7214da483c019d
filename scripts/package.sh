#!/usr/bin/env bash
# Builds the Debian package of uvs into target/debian/uvs_VERSION_ARCH.deb: the release
# binaries, manual pages and shell completions generated from their parsers, the systemd
# units and maintainer scripts of packaging/, /etc/default/uvs and /etc/uvs/uvs.toml as
# conffiles, the example configs and the Grafana dashboard. Needs cargo, strip and readelf
# (binutils, which a Rust toolchain's linker already brings), gzip and dpkg-deb: nothing a
# Debian machine that builds Rust lacks. Prints the path of the package.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
[ -n "$version" ] || { echo "package.sh: no version in Cargo.toml" >&2; exit 1; }

cargo build --release --locked --bins >&2

out=target/debian
stage="$out/uvs_${version}_${arch}"
rm -rf "$stage"
install -d "$stage/DEBIAN" "$stage/usr/sbin" "$stage/lib/systemd/system" \
    "$stage/usr/share/man/man8" "$stage/usr/share/doc/uvs/examples" \
    "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
    "$stage/usr/share/fish/vendor_completions.d" "$stage/etc/default" "$stage/etc/uvs"

for bin in uvs uvsadm; do
    install -m 0755 "target/release/$bin" "$stage/usr/sbin/$bin"
    strip --strip-unneeded "$stage/usr/sbin/$bin"
done

# Depends: the shared libraries the binaries need, each mapped to its Debian package; an
# unknown one stops the build rather than produce a package that cannot run.
glibc=$(grep -aoh 'GLIBC_2\.[0-9]*' "$stage/usr/sbin/uvs" "$stage/usr/sbin/uvsadm" \
    | sed 's/GLIBC_//' | sort -uV | tail -n 1)
for lib in $(readelf -d "$stage/usr/sbin/uvs" "$stage/usr/sbin/uvsadm" \
    | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u); do
    case "$lib" in
    libc.so.6 | libm.so.6 | libdl.so.2 | libpthread.so.0 | librt.so.1 | ld-linux*) ;;
    libgcc_s.so.1) ;;
    *) echo "package.sh: $lib is not mapped to a Debian package" >&2; exit 1 ;;
    esac
done

docs=$(mktemp -d)
trap 'rm -rf "$docs"' EXIT
target/release/uvs generate-docs "$docs"
for page in "$docs"/man8/*.8; do
    gzip -9n < "$page" > "$stage/usr/share/man/man8/$(basename "$page").gz"
done
install -m 0644 "$docs"/bash/uvs "$docs"/bash/uvsadm "$stage/usr/share/bash-completion/completions/"
install -m 0644 "$docs"/zsh/_uvs "$docs"/zsh/_uvsadm "$stage/usr/share/zsh/vendor-completions/"
install -m 0644 "$docs"/fish/uvs.fish "$docs"/fish/uvsadm.fish \
    "$stage/usr/share/fish/vendor_completions.d/"

install -m 0644 packaging/systemd/uvs.service packaging/systemd/uvs@.service \
    packaging/systemd/uvs-ipvsadm.service "$stage/lib/systemd/system/"
install -m 0644 packaging/etc/default/uvs "$stage/etc/default/uvs"
install -m 0644 packaging/etc/uvs/uvs.toml "$stage/etc/uvs/uvs.toml"

install -m 0644 packaging/debian/copyright "$stage/usr/share/doc/uvs/copyright"
install -m 0644 README.md docs/uvsadm.md "$stage/usr/share/doc/uvs/"
cp -r configs/minimal.toml configs/full.toml configs/demo.rules configs/keepalived \
    configs/ldirectord configs/ha configs/grafana "$stage/usr/share/doc/uvs/examples/"
find "$stage/usr/share/doc" -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +

install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
    "$stage/DEBIAN/"
printf '/etc/default/uvs\n/etc/uvs/uvs.toml\n' > "$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    -e "s/@GLIBC@/$glibc/" packaging/debian/control.in > "$stage/DEBIAN/control"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' \
    | sort -z | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"

deb="$out/uvs_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
rm -rf "$stage"
echo "$deb"
