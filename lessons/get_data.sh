#!/usr/bin/env bash
# `make data`: puts an MNIST-format dataset into data/ for lesson 10, and checks it.
#   1. data/ already holds a verified set: nothing to do.
#   2. Debian's dataset-fashion-mnist is installed or installable: Fashion-MNIST from it.
#   3. Otherwise, with curl or wget and internet access: MNIST, downloaded.
# Files are unpacked to data/*-ubyte, then checked: size, and SHA-256 where we know it.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data

files="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"
sizes="47040016 60008 7840016 10008"   # 60,000 / 10,000 images of 28×28, with 16- and 8-byte headers

# SHA-256 of the unpacked files, as shipped by Debian's dataset-fashion-mnist 0.0~git20200523.
fashion_sha="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"

verify() {   # prints the dataset's name if data/ holds a complete set; fails otherwise
    local i=1 f size
    for f in $files; do
        size=$(echo $sizes | cut -d' ' -f$i)
        [ -f "data/$f" ] || return 1
        [ "$(stat -c %s "data/$f")" = "$size" ] || { echo "data/$f: size $(stat -c %s "data/$f"), expected $size" >&2; return 1; }
        i=$((i + 1))
    done
    if [ "$(cd data && sha256sum $files | cut -c1-64)" = "$fashion_sha" ]; then
        echo "Fashion-MNIST (checksums verified)"
    else
        echo "an MNIST-format set (sizes verified; checksums unknown to us)"
    fi
}

unpack_from() {   # $1: a folder with the four .gz files
    local f
    for f in $files; do gunzip -c "$1/$f.gz" > "data/$f.partial" && mv "data/$f.partial" "data/$f"; done
}

if name=$(verify 2>/dev/null); then
    echo "data/ already holds $name"; exit 0
fi

debian=/usr/share/datasets/fashion-mnist
if [ ! -d "$debian" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's dataset-fashion-mnist ..."
    (apt-get install -y -qq dataset-fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }) >/dev/null 2>&1 || true
fi
if [ -d "$debian" ]; then
    unpack_from "$debian"
else
    echo "no Debian package; downloading MNIST ..."
    tmp=$(mktemp -d)
    for f in $files; do
        for base in https://ossci-datasets.s3.amazonaws.com/mnist http://yann.lecun.com/exdb/mnist; do
            if command -v curl >/dev/null; then curl -fsSL "$base/$f.gz" -o "$tmp/$f.gz" && break
            elif command -v wget >/dev/null; then wget -q "$base/$f.gz" -O "$tmp/$f.gz" && break
            fi
        done
        [ -s "$tmp/$f.gz" ] || { echo "could not download $f.gz (no internet, or no curl/wget)" >&2; rm -rf "$tmp"; exit 1; }
    done
    unpack_from "$tmp"
    rm -rf "$tmp"
fi
name=$(verify) || { echo "the files in data/ are incomplete or damaged" >&2; exit 1; }
echo "data/ now holds $name"
