"""Semantic segmentation transfer: ADE20K and plain mask folders, FCN (and smp decoders) on a backbone checkpoint,
confusion-matrix metrics, and the fine-tuning loop behind `bot finetune-seg` / `bot evaluate-seg`."""
