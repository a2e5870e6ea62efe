"""Running models: training loop, evaluation (VOC mAP, COCO AP), checkpoints and profiling."""
