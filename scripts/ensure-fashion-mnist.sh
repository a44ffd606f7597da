#!/usr/bin/env bash
# Make sure Fashion-MNIST is on this machine: Debian's dataset-fashion-mnist package when
# apt-get is available, otherwise cnnlab downloads it (with checksums) on first use.
set -u
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ] || [ -n "${CNNLAB_DATA:-}" ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="$(command -v sudo || true)"
  if [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; then
    echo "Installing Debian's dataset-fashion-mnist package..."
    $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
      { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } ||
      echo "apt-get could not install dataset-fashion-mnist; cnnlab will download Fashion-MNIST instead."
    exit 0
  fi
fi
echo "Fashion-MNIST is not installed here; cnnlab will download it on first use."
