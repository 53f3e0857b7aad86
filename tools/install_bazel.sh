#!/bin/sh
# Installs Bazel from a package registry unless a working `bazel` is on PATH:
# Debian's bazel-bootstrap (Bazel 4.2.3) where apt-get exists, else npm's
# @bazel/bazel 2.1.0. (bazelisk downloads Bazel itself and fails offline.)
set -eu

# `bazel --version` must print "bazel ...": the npm binary without its
# execute bit prints nothing and exits 0.
works() {
  bazel --version 2>/dev/null | grep -q '^bazel '
}

if command -v bazel >/dev/null 2>&1 && works; then
  exit 0
fi

SUDO=
if [ "$(id -u)" != 0 ]; then
  SUDO=sudo
fi

if command -v apt-get >/dev/null 2>&1; then
  echo "install_bazel: apt-get install bazel-bootstrap" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y -q bazel-bootstrap; then
    # A fresh machine may have no package lists yet.
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q bazel-bootstrap
  fi
elif command -v npm >/dev/null 2>&1; then
  echo "install_bazel: npm install -g @bazel/bazel@2.1.0" >&2
  $SUDO npm install -g @bazel/bazel@2.1.0
  # The package's binary arrives without its execute bit; without it `bazel`
  # prints nothing and exits 0.
  $SUDO find "$(npm root -g)/@bazel" -type f -name 'bazel-*' \
    -exec chmod +x {} +
else
  echo "install_bazel: neither apt-get nor npm found; install Bazel 4.2.3" \
       "(Debian bazel-bootstrap) by hand" >&2
  exit 1
fi

if ! works; then
  echo "install_bazel: bazel still does not run after installing" >&2
  exit 1
fi
bazel --version >&2
