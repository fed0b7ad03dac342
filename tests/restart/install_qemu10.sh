#!/bin/sh
# Install Debian bookworm-backports' QEMU 10 (qemu-system-x86 10.0.x) SIDE BY SIDE with the system QEMU 7.2.
#
#   tests/restart/install_qemu10.sh [PREFIX]        (default PREFIX: $VHOSTSCSI_QEMU10_PREFIX or /opt/qemu10)
#
# QEMU 10's vhost-user-scsi reconnects to a restarted back end (-chardev socket,...,reconnect-ms=N); Debian 12's
# 7.2 cannot. The system `qemu-system-x86_64` stays 7.2: this script never installs a package. It downloads the
# backports .debs (apt-get download) and unpacks them (dpkg -x) into PREFIX, checks the binary's libraries with
# ldd (a library this machine lacks is fetched the same way and put in PREFIX/lib), and writes
# PREFIX/bin/qemu-system-x86_64: a wrapper that runs the unpacked binary with its own firmware
# (-L PREFIX/usr/share/qemu -L PREFIX/usr/share/seabios). Idempotent: a working install is left as it is.
# Needs root only to add the backports suite to apt's sources when it is missing (then `apt-get update`).
set -eu

PREFIX=${1:-${VHOSTSCSI_QEMU10_PREFIX:-/opt/qemu10}}
SUITE=bookworm-backports
PACKAGES="qemu-system-x86 qemu-system-common qemu-system-data seabios"
WRAPPER=$PREFIX/bin/qemu-system-x86_64
say() { echo "install_qemu10: $*" >&2; }
die() { say "$*"; exit 1; }

works() {
    [ -x "$WRAPPER" ] || return 1
    "$WRAPPER" --version 2>/dev/null | grep -q 'version 10\.' || return 1
    grep -q QEMU_MODULE_DIR "$WRAPPER" || return 1
    # Machine init loads the BIOS and option ROMs: a missing firmware file fails here, not in a test.
    printf 'quit\n' | timeout 30 "$WRAPPER" -M pc -accel tcg -nodefaults -display none -monitor stdio -S \
        >/dev/null 2>&1
}

if works; then
    say "$("$WRAPPER" --version | head -n1) already at $WRAPPER"
    echo "$WRAPPER"
    exit 0
fi

# 1. The backports suite, set up like the bookworm suite in /etc/apt/sources.list.d/debian.sources.
if ! grep -rqs "^Suites:.*\b$SUITE\b\|^deb .* $SUITE " /etc/apt/sources.list /etc/apt/sources.list.d/; then
    [ "$(id -u)" = 0 ] || die "apt has no $SUITE suite; run this once as root to add it"
    uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
    cat >/etc/apt/sources.list.d/$SUITE.sources <<SRC
Types: deb
URIs: ${uri:-http://deb.debian.org/debian}
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    say "added /etc/apt/sources.list.d/$SUITE.sources"
fi
if ! apt-cache policy qemu-system-x86 2>/dev/null | grep -q "$SUITE"; then
    [ "$(id -u)" = 0 ] || die "apt does not know $SUITE's packages yet; run 'apt-get update' as root"
    apt-get update -qq >&2 || die "apt-get update failed"
fi

# 2. Download and unpack (no installation: dpkg -x only).
debs=$PREFIX/debs
mkdir -p "$debs" "$PREFIX/bin" "$PREFIX/lib"
cd "$debs"
for p in $PACKAGES; do
    ls ./"$p"_*.deb >/dev/null 2>&1 || apt-get download -q "$p/$SUITE" >&2 || die "cannot download $p/$SUITE"
done
for deb in ./*.deb; do
    dpkg -x "$deb" "$PREFIX"
done
BIN=$PREFIX/usr/bin/qemu-system-x86_64
[ -x "$BIN" ] || die "$BIN missing after unpacking"

# 3. Libraries this machine lacks: fetch the package that has them (backports first) into PREFIX/lib.
missing() { LD_LIBRARY_PATH=$PREFIX/lib ldd "$BIN" | awk '/not found/ {print $1}'; }
for lib in $(missing); do
    pkg=$(apt-cache search --names-only "^$(echo "$lib" | sed 's/\.so\.\([0-9]*\).*/\1/; s/[^a-z0-9]//g')" \
          2>/dev/null | awk 'NR==1 {print $1}')
    [ -n "$pkg" ] || die "no package found for $lib"
    say "$lib is missing: unpacking $pkg"
    apt-get download -q "$pkg/$SUITE" >&2 2>/dev/null || apt-get download -q "$pkg" >&2 || die "cannot download $pkg"
    tmp=$(mktemp -d)
    dpkg -x ./"$pkg"_*.deb "$tmp"
    find "$tmp" -name 'lib*.so*' -exec cp -a {} "$PREFIX/lib/" \;
    rm -rf "$tmp"
done
[ -z "$(missing)" ] || die "still missing libraries: $(missing | tr '\n' ' ')"

# 4. The wrapper: the unpacked binary, its libraries and its firmware (not the system 7.2's).
cat >"$WRAPPER" <<SH
#!/bin/sh
# QEMU 10 from $SUITE, unpacked by tests/restart/install_qemu10.sh (the system QEMU is left alone).
LD_LIBRARY_PATH=$PREFIX/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
# Its own loadable modules first. Modules it lacks (GUI ones) are still tried in the system 7.2 dir and refused
# with a harmless "Only modules from the same build can be loaded" on stderr.
QEMU_MODULE_DIR=$PREFIX/usr/lib/x86_64-linux-gnu/qemu
export LD_LIBRARY_PATH QEMU_MODULE_DIR
exec "$BIN" -L "$PREFIX/usr/share/qemu" -L "$PREFIX/usr/share/seabios" "\$@"
SH
chmod 755 "$WRAPPER"
works || die "$WRAPPER does not start a TCG machine (firmware?): try it by hand"
say "$("$WRAPPER" --version | head -n1) installed at $WRAPPER (system qemu-system-x86_64 untouched)"
echo "$WRAPPER"
