# Sourced by scripts/test, scripts/demo and scripts/bench: installs what nodeplane
# needs on a fresh Debian machine (as root) and mounts bpffs. Idempotent and quiet
# when everything is already there.

np_need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: $0 must run as root (it creates network namespaces and attaches XDP programs)" >&2
        exit 1
    fi
}

np_install() {
    local missing=()
    local pkg cmd
    # package:command-or-file that proves it is installed
    for pair in clang:clang llvm:llc libelf-dev:/usr/include/libelf.h zlib1g-dev:/usr/include/zlib.h \
        pkg-config:pkg-config m4:m4 make:make iproute2:ip ethtool:ethtool nftables:nft \
        iptables:iptables tcpdump:tcpdump python3-scapy:/usr/lib/python3/dist-packages/scapy \
        netsniff-ng:trafgen sockperf:sockperf containernetworking-plugins:/usr/lib/cni/host-local \
        libbpf-dev:/usr/include/bpf/libbpf.h gcc-multilib:/usr/include/x86_64-linux-gnu/gnu/stubs-32.h \
        util-linux:nsenter valgrind:valgrind dnsutils:dig \
        python3-dnspython:/usr/lib/python3/dist-packages/dns/resolver.py; do
        pkg=${pair%%:*}
        cmd=${pair#*:}
        if [[ "$cmd" == /* ]]; then
            [ -e "$cmd" ] || missing+=("$pkg")
        else
            command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
        fi
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo is not installed (install Rust with rustup first)" >&2
        exit 1
    fi
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
}

# The test runner CI uses everywhere (built from crates.io once, then cached in
# ~/.cargo/bin).
np_install_nextest() {
    if ! cargo nextest --version >/dev/null 2>&1; then
        echo "installing cargo-nextest from crates.io" >&2
        cargo install cargo-nextest --locked --quiet >&2
    fi
}
