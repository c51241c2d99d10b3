#!/usr/bin/env bash
# Prepares everything needed to boot a Keel test guest, idempotently:
#   1. host packages (QEMU 10 and libvirt 11 from bookworm-backports, fio, busybox-static, cpio,
#      e2fsprogs, kmod),
#   2. the Debian kernel and its modules, unpacked under qemu/.cache/,
#   3. an initramfs holding busybox, fio, e2fsprogs, the virtio/ext4 modules and the job scripts.
# Every step is skipped when its result is already there and up to date.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"

# Packages whose programs the host and the guest image need (prometheus: its promtool checks
# keeld's /metrics in the tests; ceph-mon, ceph-osd and librbd-dev: the single-node Ceph cluster
# of tests/ceph/start.sh and the library keeld's rbd engine loads).
HOST_PACKAGES=(fio busybox-static cpio e2fsprogs kmod gzip prometheus ceph-mon ceph-osd librbd-dev)
# Modules the guest loads, in any order; their dependencies are added and ordered by modprobe.
# (button and evdev: the ACPI power button, which `virsh shutdown` presses.)
GUEST_MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk
    crc32c_generic ext4 button evdev)

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        as_root apt-get -o DPkg::Lock::Timeout=300 update -qq
        apt_updated=1
    fi
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends "$@" >&2
}

# apt-get download into the current directory (as root, apt's _apt user may not reach it).
apt_download() {
    local sandbox=()
    [ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
    apt-get download -qq "${sandbox[@]+"${sandbox[@]}"}" "$@"
}

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

codename() {
    # shellcheck disable=SC1091
    (. /etc/os-release && echo "${VERSION_CODENAME:-}")
}

# The URI of the configured Debian archive (the entry serving the release itself, not security),
# read from one-line .list files or deb822 .sources files.
debian_mirror_uri() {
    local suite=$1 f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v s="$suite" '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == s) { print $i; exit } }' "$f"
    done | head -n 1 | grep . && return 0
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v s="$suite" '
            function flush() { if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " s " ") && uri != "") { print uri; found = 1; exit } }
            /^[ \t]*$/ { flush(); types = ""; suites = ""; uri = ""; next }
            /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0 }
            /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
            /^URIs:/ { sub(/^URIs:[ \t]*/, ""); split($0, u, /[ \t]+/); uri = u[1] }
            END { if (!found) flush() }' "$f"
    done | head -n 1 | grep .
}

# Adds <codename>-backports to apt's sources, reusing the mirror already configured.
ensure_backports_source() {
    local suite=$1-backports uri
    if grep -rqs -- "$suite" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return 0
    fi
    uri=$(debian_mirror_uri "$1") || die "no Debian mirror for $1 found in /etc/apt/sources.list*"
    log "adding $suite from $uri"
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$uri" "$suite" | as_root tee /etc/apt/sources.list.d/keel-backports.sources >/dev/null
    apt_updated=0
}

install_host_packages() {
    local missing=() p release
    for p in "${HOST_PACKAGES[@]}"; do
        is_installed "$p" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt_update_once
        log "installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
    if [ "$(qemu_major)" -lt 10 ] || [ "$(qsd_major)" -lt 10 ]; then
        release=$(codename)
        if [ "$release" = bookworm ]; then
            # bookworm ships QEMU 7.2; version 10 (QEMU and the storage daemon alike) is in backports.
            ensure_backports_source "$release"
            apt_update_once
            log "installing qemu-system-x86 and qemu-utils from $release-backports"
            apt_install -t "$release-backports" qemu-system-x86 qemu-utils
        else
            apt_update_once
            apt_install qemu-system-x86 qemu-utils
        fi
    fi
    # The storage daemon's rbd driver (the peer of keeld's rbd engine in the benchmark) is in
    # qemu-block-extra, which must come from the same release as QEMU: bookworm's own is 7.2.
    if ! is_installed qemu-block-extra; then
        release=$(codename)
        apt_update_once
        if [ "$release" = bookworm ]; then
            ensure_backports_source "$release"
            apt_update_once
            log "installing qemu-block-extra from $release-backports"
            apt_install -t "$release-backports" qemu-block-extra
        else
            apt_install qemu-block-extra
        fi
    fi
    [ "$(qemu_major)" -ge 10 ] || die "qemu-system-x86_64 is not version 10: $(qemu-system-x86_64 --version | head -n 1)"
    [ "$(qsd_major)" -ge 10 ] || die "qemu-storage-daemon is not version 10: $(qemu-storage-daemon --version | head -n 1)"
    install_libvirt
}

libvirt_major() {
    command -v libvirtd >/dev/null || { echo 0; return; }
    libvirtd --version | sed -n 's/.* \([0-9][0-9]*\)\.[0-9.]*$/\1/p' | head -n 1
}

# libvirt 11 (the qemu test's libvirtd and virsh), from backports on bookworm like QEMU, so
# that it never pulls QEMU back to 7.2.
install_libvirt() {
    local pkgs=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients) release
    if [ "$(libvirt_major)" -lt 11 ] || ! command -v virt-xml-validate >/dev/null; then
        release=$(codename)
        apt_update_once
        log "installing ${pkgs[*]}"
        if [ "$release" = bookworm ]; then
            ensure_backports_source "$release"
            apt_update_once
            apt_install -t "$release-backports" "${pkgs[@]}"
        else
            apt_install "${pkgs[@]}"
        fi
    fi
    [ "$(libvirt_major)" -ge 11 ] || die "libvirtd is not version 11: $(libvirtd --version)"
    [ "$(qemu_major)" -ge 10 ] || die "installing libvirt changed QEMU: $(qemu-system-x86_64 --version | head -n 1)"
}

# Downloads the Debian kernel package (linux-image-amd64 resolved to its linux-image-*-amd64) and
# unpacks it into the cache; records the kernel release in kernel/RELEASE.
fetch_kernel() {
    local dir=$CACHE_DIR/kernel debs=$CACHE_DIR/debs dep name version release
    if [ -f "$dir/RELEASE" ] && [ -f "$KERNEL_IMAGE" ]; then
        return 0
    fi
    rm -rf "$dir" "$debs"
    mkdir -p "$dir/root" "$debs"
    log "downloading the Debian kernel"
    (cd "$debs" && apt_download linux-image-amd64) || {
        apt_update_once
        (cd "$debs" && apt_download linux-image-amd64)
    }
    dep=$(dpkg-deb -f "$debs"/linux-image-amd64_*.deb Depends | tr ',' '\n' | grep -o 'linux-image-[0-9][^ ]*-amd64 *(= *[^)]*)' | head -n 1)
    [ -n "$dep" ] || die "cannot resolve linux-image-amd64 to a kernel package"
    name=${dep%% *}
    version=$(echo "$dep" | sed 's/.*(= *\([^)]*\))/\1/')
    (cd "$debs" && apt_download "$name=$version")
    log "unpacking $name $version"
    dpkg-deb -x "$debs/${name}_"*.deb "$dir/root"
    release=$(ls "$dir/root/lib/modules" 2>/dev/null || ls "$dir/root/usr/lib/modules")
    [ -n "$release" ] || die "no modules in $name"
    cp "$dir/root/boot/vmlinuz-$release" "$KERNEL_IMAGE"
    echo "$release" >"$dir/RELEASE"
    rm -rf "$debs"
}

# Copies a host program and every shared library it loads into the image root.
copy_program() {
    local root=$1 prog=$2 lib
    install -D -m 0755 "$prog" "$root$prog"
    for lib in $(ldd "$prog" | grep -o '/[^ ]*'); do
        [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
}

# Copies the guest modules (with their dependencies, in load order) and writes the load order.
copy_modules() {
    local root=$1 release=$2 kroot=$CACHE_DIR/kernel/root mdir m path dst
    mdir=lib/modules/$release
    [ -d "$kroot/$mdir" ] || mdir=usr/lib/modules/$release
    [ -f "$kroot/$mdir/modules.dep" ] || depmod -b "$kroot" "$release"
    : >"$root/etc/keel-modules"
    for m in "${GUEST_MODULES[@]}"; do
        if grep -qE "/$m\.ko(\.[a-z]+)?$" "$kroot/$mdir/modules.builtin" 2>/dev/null; then
            continue
        fi
        modprobe -d "$kroot" -S "$release" --show-depends "$m" | while read -r kind path _; do
            [ "$kind" = insmod ] || continue
            dst=/lib/modules/$release/$(basename "${path%.xz}")
            dst=${dst%.zst}
            grep -qxF "$dst" "$root/etc/keel-modules" && continue
            mkdir -p "$root/lib/modules/$release"
            case $path in
            *.xz) xz -dc "$path" >"$root$dst" ;;
            *.zst) zstd -qdc "$path" >"$root$dst" ;;
            *) cp "$path" "$root$dst" ;;
            esac
            echo "$dst" >>"$root/etc/keel-modules"
        done
    done
}

# Everything the initramfs is built from; a change in any of them rebuilds it.
initramfs_inputs_digest() {
    {
        cat "$CACHE_DIR/kernel/RELEASE"
        sha256sum "$QEMU_DIR/prepare.sh" "$QEMU_DIR"/guest/init "$QEMU_DIR"/guest/jobs/* \
            /bin/busybox "$(command -v fio)" "$(command -v mke2fs)" "$(command -v e2fsck)"
    } | sha256sum | cut -d' ' -f1
}

build_initramfs() {
    local root=$CACHE_DIR/initramfs-root release digest stamp=$CACHE_DIR/initramfs.digest applet prog
    release=$(cat "$CACHE_DIR/kernel/RELEASE")
    digest=$(initramfs_inputs_digest)
    if [ -f "$INITRAMFS_IMAGE" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ]; then
        return 0
    fi
    log "building the initramfs for $release"
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,mnt,run,root,jobs}
    install -m 0755 /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    for prog in "$(command -v fio)" "$(readlink -f "$(command -v mke2fs)")" "$(readlink -f "$(command -v e2fsck)")"; do
        copy_program "$root" "$prog"
    done
    ln -sf "$(readlink -f "$(command -v mke2fs)")" "$root/sbin/mkfs.ext4"
    ln -sf "$(readlink -f "$(command -v e2fsck)")" "$root/sbin/fsck.ext4"
    [ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"
    copy_modules "$root" "$release"
    install -m 0755 "$QEMU_DIR/guest/init" "$root/init"
    install -m 0755 "$QEMU_DIR"/guest/jobs/* "$root/jobs/"
    (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$INITRAMFS_IMAGE.tmp"
    mv "$INITRAMFS_IMAGE.tmp" "$INITRAMFS_IMAGE"
    echo "$digest" >"$stamp"
    log "initramfs: $(du -h "$INITRAMFS_IMAGE" | cut -f1)"
}

main() {
    mkdir -p "$CACHE_DIR"
    # One preparation at a time: concurrent runs wait here and then find the work done.
    exec 9>"$CACHE_DIR/.lock"
    flock 9
    install_host_packages
    fetch_kernel
    build_initramfs
    log "guest ready: kernel $(cat "$CACHE_DIR/kernel/RELEASE"), $(qemu-system-x86_64 --version | head -n 1)"
}

main "$@"
