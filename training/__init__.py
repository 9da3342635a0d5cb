"""Offline distillation: data sources, teacher pseudo-labels, student training, evaluation and ONNX export.

Installed as `stereo_distill` (the name of its `stereo-distill` command): a top-level package named `training` in
site-packages would collide with any other of that name. The folder keeps its name, so imports inside it are
relative.
"""
