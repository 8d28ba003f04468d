#!/usr/bin/env bash
# `make data`: puts the course's two datasets into data/, and checks them.
#
# Images for lesson 10, an MNIST-format set:
#   1. data/ already holds a verified set: nothing to do.
#   2. Debian's dataset-fashion-mnist is installed or installable: Fashion-MNIST from it.
#   3. Otherwise, with curl or wget and internet access: MNIST, downloaded.
# Files are unpacked to data/*-ubyte, then checked: size, and SHA-256 where we know it.
#
# Text for lesson 15, data/fortunes.txt: the fortune files of Debian's `fortunes` package and of
# `fortunes-min`, which it depends on and brings along (fortunes, literature, riddles), that is
# the regular files in /usr/share/games/fortunes/ that `dpkg -L fortunes fortunes-min` lists and
# that are neither *.dat (fortune's index files) nor *.u8 (links to the files themselves),
# concatenated in name order (bytewise, LC_ALL=C; they share one folder, so full paths and file
# names sort alike): 43 files, 2,576,674 bytes for version 1:1.99.1-7.3. (`dpkg -L fortunes`
# alone lists 40 of them, 2,478,275 bytes.) Checked by size and SHA-256; written to a .partial
# file first and renamed, so data/ never holds half a file.
#
# Exit status: that of the images, which CI checks before it runs lesson 10. When the text
# cannot be had, this says why and how to get it, and still exits 0 if the images are there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data

# ---- images (lesson 10) ----------------------------------------------------------------------
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

apt_install() {   # $1: a Debian package, installed when missing and we are root with apt
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed" && return 0
    command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] || return 0
    echo "installing Debian's $1 ..."
    local install="apt-get install -y -qq -o DPkg::Lock::Timeout=120 $1"
    ($install || { apt-get update -qq && $install; }) >/dev/null 2>&1 || true
}

get_images() {
    local name debian=/usr/share/datasets/fashion-mnist tmp f base
    if name=$(verify 2>/dev/null); then
        echo "data/ already holds $name"; return 0
    fi
    [ -d "$debian" ] || apt_install dataset-fashion-mnist
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
            [ -s "$tmp/$f.gz" ] || { echo "could not download $f.gz (no internet, or no curl/wget)" >&2; rm -rf "$tmp"; return 1; }
        done
        unpack_from "$tmp"
        rm -rf "$tmp"
    fi
    name=$(verify) || { echo "the files in data/ are incomplete or damaged" >&2; return 1; }
    echo "data/ now holds $name"
}

# ---- text (lesson 15) ------------------------------------------------------------------------
text=data/fortunes.txt
text_size=2576674
text_sha=fbc2d796dde8ea64a51345ce4c18ff486a778a2d2259603987073bedb3fc3cd7   # of 1:1.99.1-7.3

text_verified() {
    [ -f "$text" ] && [ "$(stat -c %s "$text")" = "$text_size" ] &&
        [ "$(sha256sum "$text" | cut -c1-64)" = "$text_sha" ]
}

fortune_files() {   # the files to concatenate, one per line, in name order
    dpkg -L fortunes fortunes-min 2>/dev/null | grep '^/usr/share/games/fortunes/[^/]*$' |
        grep -v -e '\.dat$' -e '\.u8$' | while read -r f; do
            if [ -f "$f" ] && [ ! -L "$f" ]; then echo "$f"; fi
        done | LC_ALL=C sort
}

get_text() {
    local list version paths
    if text_verified; then
        echo "$text already holds the fortunes (checksum verified)"; return 0
    fi
    apt_install fortunes
    list=$(fortune_files)
    if [ -z "$list" ] && [ -f "$text" ]; then
        echo "$text: $(stat -c %s "$text") bytes, not the fortunes we know ($text_size bytes, a" \
             "known SHA-256); kept, as no fortunes package is here to make it again from" >&2
        return 0
    fi
    if [ -z "$list" ]; then
        cat >&2 <<MESSAGE
$text: not made. It is the fortune files of Debian's packages fortunes and fortunes-min
(1:1.99.1-7.3), which are not installed here. To get them:
  - on Debian or Ubuntu, as root: apt-get install fortunes   (then make data again);
  - elsewhere: unpack the two .deb files (pool/main/f/fortune-mod/ on a Debian mirror) with
    dpkg-deb -x, or ar x and tar, and concatenate the files of usr/share/games/fortunes/ that
    are neither *.dat nor *.u8, in name order (LC_ALL=C sort), into $text.
Lesson 15 needs it; lesson 10 does not.
MESSAGE
        return 1
    fi
    mapfile -t paths <<< "$list"
    cat "${paths[@]}" > "$text.partial" || { rm -f "$text.partial"; return 1; }
    mv "$text.partial" "$text"
    if text_verified; then
        echo "$text now holds the fortunes: ${#paths[@]} files, $text_size bytes" \
             "(checksum verified)"
    else
        version=$(dpkg-query -W -f='${Version}' fortunes 2>/dev/null || echo unknown)
        echo "$text now holds the fortunes of version $version: $(stat -c %s "$text") bytes," \
             "not the $text_size of 1:1.99.1-7.3 (checksum unknown to us): lesson 15's numbers" \
             "will differ a little"
    fi
}

status=0
get_images || status=1
get_text || true   # it said why, and lesson 10 does not need the text
exit $status
