#!/usr/bin/env bash
# Installs what building and testing swarmgate needs on Debian/Ubuntu. Idempotent; run as
# root (or with sudo available). Used by the README's quick start and by .ci/run.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# System packages: a C toolchain for AWS-LC (aws-lc-sys); DPDK 22.11+ (headers, and the PMDs
# that EAL loads as plugins) with libclang for bindgen; and what the namespace tests use:
# openssl (the swarm tests verify certificates with it), iproute2, ethtool, ping,
# python3 with python3-cryptography (the independent ESP
# implementation of the interop tests), tcpdump and tshark; protoc for the daemon's gRPC schema;
# util-linux for nsenter.
pkgs=(build-essential pkg-config libdpdk-dev dpdk libclang-dev clang iproute2 ethtool iputils-ping
      python3 python3-cryptography tcpdump tshark protobuf-compiler util-linux openssl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  # tshark asks whether non-root users may capture; the default (no) is fine.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections 2>/dev/null || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Rust: the workspace needs a current stable toolchain (1.80+). Debian 12's own cargo is too
# old; rustup (packaged in Debian 13 / Ubuntu 24.04, or from rustup.rs) provides one.
need_rust() {
  command -v cargo >/dev/null 2>&1 || return 0
  local v; v=$(cargo --version | awk '{print $2}')
  [ "$(printf '%s\n1.80.0\n' "$v" | sort -V | head -1)" != "1.80.0" ]
}
if need_rust; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
if need_rust; then
  echo "install-deps: installing rustup and the stable toolchain"
  $SUDO apt-get install -y -qq rustup >/dev/null 2>&1 || true
  if ! command -v rustup >/dev/null 2>&1; then
    echo "install-deps: no rustup package here; install Rust from https://rustup.rs and rerun" >&2
    exit 1
  fi
  rustup default stable
fi
cargo --version
