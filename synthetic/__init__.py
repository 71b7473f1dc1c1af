"""The embedded default: a procedural "shapes" world, written to disk in the real layouts (ImageFolder, VOC,
COCO, ADE20K) so that the real loaders are the ones that run. Imports no stage."""
