"""Data: sources, decoding cache, statistics, augmentation and the device-resident loader."""
