"""The pretrain stage: ResNet A/B/C/D backbones on timm, the paper's tricks, its augmentation and recipes,
the training loop, and the backbone checkpoint that the downstream stages load."""
