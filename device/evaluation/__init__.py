"""The parts of `blindgate-device evaluate` (device/evaluate.py): pairs files, metrics, embedding,
the encrypted run and the report."""
