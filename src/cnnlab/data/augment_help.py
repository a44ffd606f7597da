"""The augmentation spec grammar: its one description, free of torch so `--help` stays instant.

``cnnlab train --help`` and ``cnnlab data show --help`` print it, and docs/data.md shows it.
Tests hold it equal to the text generated from the op classes
(``cnnlab.data.augment._help_text``) and to the copy in docs/data.md, so none can drift.
"""

AUGMENT_HELP = """\
Augmentation spec: comma-separated ops, applied in order, each NAME[:ARG...] with
positional args in the order below, or NAME:KEY=VALUE[:KEY=VALUE...].
  hflip (flip)        p=0.5
                        horizontal (left-right) flip with probability p
  vflip               p=0.5
                        vertical (top-bottom) flip with probability p
  crop                padding=4 mode=zero|reflect
                        pad by `padding` px (zero or reflect), crop a random input-sized window
  rrc (resized-crop)  min_scale=0.35 max_scale=1 min_ratio=0.75 max_ratio=1.333 size=0
                        random resized crop: area fraction, aspect ratio, output size (0 = input size)
  jitter              brightness=0.4 contrast=0.4 saturation=0.4 hue=0
                        colour jitter; 'jitter:S' sets brightness = contrast = saturation = S
  cutout              size=8 fill=zero|mean p=1
                        blank a random size x size square (may be clipped at the border)
  erase               p=0.5 min_scale=0.02 max_scale=0.33 min_ratio=0.3 max_ratio=3.3 fill=zero|mean|random
                        blank a random rectangle: area fraction, aspect ratio (h/w) range, fill
  trivial             magnitude=1
                        TrivialAugmentWide: one random op and strength per sample (no equalize)
Presets: standard = hflip,crop:4; none = no augmentation.
Example: flip,crop:4:reflect,cutout:8  or  crop:padding=4:mode=reflect"""
