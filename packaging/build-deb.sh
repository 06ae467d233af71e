#!/usr/bin/env bash
# Builds the appliance for one Debian architecture and packages it as a .deb:
#   packaging/build-deb.sh [--arch amd64|arm64|armhf] [--flavour edge|hub] [--out DIR]
# edge (default): the lean build without the SQL engine and lake exports, for gateways;
# hub: the full build. Binaries use the `dist` profile (stripped); ARM builds cross-compile
# with Debian's cross toolchains (gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf).
# The package lands in DIR (default: $CARGO_TARGET_DIR/packages or target/packages), named
# appliance[-edge]_VERSION_ARCH.deb. docs/deployment.md says what it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=$(dpkg --print-architecture)
flavour=edge
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --flavour) flavour=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1 (--arch, --flavour, --out)" >&2; exit 2 ;;
  esac
done

case "$arch" in
  amd64) triple=x86_64-unknown-linux-gnu ;;
  arm64) triple=aarch64-unknown-linux-gnu ;;
  armhf) triple=armv7-unknown-linux-gnueabihf ;;
  *) echo "unsupported architecture $arch (amd64, arm64, armhf)" >&2; exit 2 ;;
esac
case "$flavour" in
  edge) features=(--no-default-features); package=appliance-edge; other=appliance ;;
  hub) features=(); package=appliance; other=appliance-edge ;;
  *) echo "unknown flavour $flavour (edge, hub)" >&2; exit 2 ;;
esac

target_dir=${CARGO_TARGET_DIR:-target}
out=${out:-$target_dir/packages}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

cargo build --locked -p appliance "${features[@]}" --profile dist --target "$triple"
binary="$target_dir/$triple/dist/appliance"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$binary" "$root/usr/bin/appliance"
install -D -m 0644 packaging/appliance.toml "$root/etc/appliance/appliance.toml"
install -D -m 0644 packaging/appliance.service "$root/lib/systemd/system/appliance.service"
install -D -m 0644 README.md "$root/usr/share/doc/appliance/README.md"
for doc in deployment operations security linking kafka; do
  install -D -m 0644 "docs/$doc.md" "$root/usr/share/doc/appliance/$doc.md"
done
install -d "$root/DEBIAN"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
installed_kib=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: $package
Version: $version
Architecture: $arch
Maintainer: Appliance developers <appliance@localhost>
Section: net
Priority: optional
Installed-Size: $installed_kib
Depends: libc6 (>= 2.34), adduser
Conflicts: $other
Replaces: $other
Provides: appliance-service
Description: edge-to-core pipeline appliance ($flavour build)
 A durable partitioned log with Kafka's model, WebAssembly connectors and
 transforms, and QUIC cluster links from edges to a hub, in one binary run as
 the systemd service appliance.service by the unprivileged user appliance.
CONTROL
mkdir -p "$out"
deb="$out/${package}_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
