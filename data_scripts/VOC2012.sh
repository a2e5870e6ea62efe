#!/usr/bin/env bash
# Download PASCAL VOC2012 trainval (~1.9 GB) into TARGET/VOCdevkit/VOC2012.
#
# Usage:  bash data_scripts/VOC2012.sh [TARGET]        (TARGET defaults to datasets)
# Then:   export VOC_ROOT=TARGET/VOCdevkit              (datasets/VOCdevkit is the default)
#         names voc_2012_trainval, voc_2012_train, voc_2012_val
#         (VOC2012 test annotations are not public; evaluate on voc_2007_test)
#
# Rerun after an interruption: the download resumes, its size is checked, unpacking is skipped when done.
set -euo pipefail
TARGET="${1:-datasets}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=_download.sh
source "$HERE/_download.sh"

DL="$TARGET/downloads"
VOC="$TARGET/VOCdevkit/VOC2012"
fetch "$DL/VOCtrainval_11-May-2012.tar" 1999639040 \
    http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar \
    https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar
unpack "$DL/VOCtrainval_11-May-2012.tar" "$TARGET" "$VOC/ImageSets/Main/trainval.txt"
echo "done: VOC2012 in $VOC; export VOC_ROOT=$TARGET/VOCdevkit"
