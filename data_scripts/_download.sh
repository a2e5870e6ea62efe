# Shared helpers for the download scripts (sourced, not run): resumable download, size check, unpack.
#
#   fetch DEST SIZE URL [MIRROR_URL ...]   download into DEST until it has exactly SIZE bytes
#                                           (SIZE "-" = unknown: any non-empty file is accepted)
#   unpack ARCHIVE TARGET MARKER           extract a .tar/.tgz/.zip into TARGET unless MARKER exists
#
# Downloads resume (curl -C - or wget -c), so rerunning a script after an interruption continues
# where it stopped. Without network, a file copied into place by hand is checked and used.

file_size() {  # bytes of a file (0 when missing); portable across GNU and BSD
    if [ -f "$1" ]; then wc -c < "$1" | tr -d ' '; else echo 0; fi
}

size_ok() {  # size_ok FILE SIZE: the file is complete
    local have
    have=$(file_size "$1")
    if [ "$2" = "-" ]; then [ "$have" -gt 0 ]; else [ "$have" = "$2" ]; fi
}

download_once() {  # download_once URL DEST: one resumable attempt; returns the tool's exit status
    if command -v curl > /dev/null; then
        curl -fL --retry 3 --connect-timeout 20 -C - -o "$2" "$1"
    elif command -v wget > /dev/null; then
        wget -c --tries=3 --timeout=20 -O "$2" "$1"
    else
        echo "error: neither curl nor wget is installed; install one of them and rerun" >&2
        exit 2
    fi
}

fetch() {  # fetch DEST SIZE URL [MIRROR ...]
    local dest=$1 size=$2 url status
    shift 2
    mkdir -p "$(dirname "$dest")"
    if size_ok "$dest" "$size"; then
        echo "ok: $dest is complete ($(file_size "$dest") bytes)"
        return 0
    fi
    for url in "$@"; do
        echo "downloading $url -> $dest"
        status=0
        download_once "$url" "$dest" || status=$?
        if size_ok "$dest" "$size"; then
            echo "ok: $dest ($(file_size "$dest") bytes)"
            return 0
        fi
        if [ "$size" != "-" ] && [ "$(file_size "$dest")" -gt "$size" ]; then
            echo "warning: $dest is larger than the expected $size bytes; deleting it" >&2
            rm -f "$dest"
        fi
        echo "warning: download from $url did not complete (exit status $status)" >&2
    done
    cat >&2 <<MSG

error: could not download $(basename "$dest") (have $(file_size "$dest") of $size bytes).
  - No network? Check your connection or proxy (curl/wget honour https_proxy), then rerun:
    finished parts are kept and the download resumes.
  - Or download it on another machine from
      $*
    copy it to $dest and rerun this script; it checks the size and unpacks.
MSG
    exit 1
}

unpack() {  # unpack ARCHIVE TARGET MARKER
    local archive=$1 target=$2 marker=$3
    if [ -e "$marker" ]; then
        echo "ok: $(basename "$archive") already unpacked ($marker exists)"
        return 0
    fi
    echo "unpacking $archive -> $target"
    mkdir -p "$target"
    case "$archive" in
        *.zip) unzip -q -o "$archive" -d "$target" ;;
        *) tar -xf "$archive" -C "$target" ;;
    esac
    if [ ! -e "$marker" ]; then
        echo "error: unpacking $archive did not create $marker; the archive may be damaged (delete it and rerun)" >&2
        exit 1
    fi
}
