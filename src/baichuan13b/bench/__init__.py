"""Speed and memory measurements (figures printed, never asserted in unit tests)."""
