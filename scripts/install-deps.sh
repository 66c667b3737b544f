#!/bin/sh
# Installs what twconduit needs to build and test on Debian 12 (bookworm). Run as root,
# or with sudo available.
set -e
SUDO=
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
PKGS="ca-certificates pkg-config gcc g++ make libc6-dev lua5.4 liblua5.4-dev luarocks \
  libcurl4-openssl-dev libwebsockets-dev libwebsockets-evlib-uv libuv1-dev libcjson-dev libssl-dev \
  lua-busted lua-luassert lua-check lua-cqueues lua-luv valgrind procps socat openssl \
  libhiredis-dev redis-server clang libclang-rt-14-dev prometheus chromium curl"
missing=
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
echo "dependencies ready"
