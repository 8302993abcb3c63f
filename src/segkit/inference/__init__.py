"""The prediction engine: checkpoints, test-time augmentation, tiles, runtimes, writers."""
