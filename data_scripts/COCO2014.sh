#!/usr/bin/env bash
# Download COCO 2014 train + val images and instance annotations (~20 GB) into TARGET.
#
# Usage:  bash data_scripts/COCO2014.sh [TARGET]        (TARGET defaults to datasets/coco)
# Result: TARGET/train2014/, TARGET/val2014/, TARGET/annotations/instances_{train,val}2014.json
#         and, from Detectron's release, instances_{minival,valminusminival}2014.json
# Then:   export COCO_ROOT=TARGET                        (datasets/coco is the default)
#         names coco_2014_train, coco_2014_val, coco_2014_minival, coco_2014_valminusminival
#
# Rerun after an interruption: downloads resume, sizes are checked, unpacking is skipped when done.
set -euo pipefail
TARGET="${1:-datasets/coco}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=_download.sh
source "$HERE/_download.sh"

DL="$TARGET/downloads"
fetch "$DL/annotations_trainval2014.zip" 252872794 \
    http://images.cocodataset.org/annotations/annotations_trainval2014.zip
fetch "$DL/val2014.zip" 6645013297 http://images.cocodataset.org/zips/val2014.zip
fetch "$DL/train2014.zip" 13510573713 http://images.cocodataset.org/zips/train2014.zip
unpack "$DL/annotations_trainval2014.zip" "$TARGET" "$TARGET/annotations/instances_val2014.json"
unpack "$DL/val2014.zip" "$TARGET" "$TARGET/val2014"
unpack "$DL/train2014.zip" "$TARGET" "$TARGET/train2014"

# minival / valminusminival split of val2014 (size not published: only checked to be non-empty)
fetch "$DL/coco_annotations_minival.tgz" - \
    https://dl.fbaipublicfiles.com/detectron/coco/coco_annotations_minival.tgz
if [ ! -f "$TARGET/annotations/instances_minival2014.json" ]; then
    tmp="$(mktemp -d "$TARGET/minival.XXXXXX")"
    tar -xzf "$DL/coco_annotations_minival.tgz" -C "$tmp"
    find "$tmp" -name 'instances_*minival2014.json' -exec mv {} "$TARGET/annotations/" \;
    rm -rf "$tmp"
fi
echo "done: COCO 2014 in $TARGET; export COCO_ROOT=$TARGET"
