"""Faster R-CNN fine-tuning on a backbone checkpoint: VOC and COCO data, the model, VOC and COCO metrics, the loop."""
