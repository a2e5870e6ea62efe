#!/usr/bin/env bash
# Download PASCAL VOC2007 trainval + test (~0.9 GB) into TARGET/VOCdevkit/VOC2007.
#
# Usage:  bash data_scripts/VOC2007.sh [TARGET]        (TARGET defaults to datasets)
# Then:   export VOC_ROOT=TARGET/VOCdevkit              (datasets/VOCdevkit is the default)
#         names voc_2007_trainval, voc_2007_test, voc_2007_train, voc_2007_val
#
# Rerun after an interruption: downloads resume, sizes are checked, unpacking is skipped when done.
# The tar files are kept in TARGET/downloads; delete them once unpacked to save space.
set -euo pipefail
TARGET="${1:-datasets}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=_download.sh
source "$HERE/_download.sh"

DL="$TARGET/downloads"
VOC="$TARGET/VOCdevkit/VOC2007"
fetch "$DL/VOCtrainval_06-Nov-2007.tar" 460032000 \
    http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar \
    https://pjreddie.com/media/files/VOCtrainval_06-Nov-2007.tar
fetch "$DL/VOCtest_06-Nov-2007.tar" 451020800 \
    http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar \
    https://pjreddie.com/media/files/VOCtest_06-Nov-2007.tar
unpack "$DL/VOCtrainval_06-Nov-2007.tar" "$TARGET" "$VOC/ImageSets/Main/trainval.txt"
unpack "$DL/VOCtest_06-Nov-2007.tar" "$TARGET" "$VOC/ImageSets/Main/test.txt"
echo "done: VOC2007 in $VOC ($(ls "$VOC/JPEGImages" | wc -l | tr -d ' ') images); export VOC_ROOT=$TARGET/VOCdevkit"
