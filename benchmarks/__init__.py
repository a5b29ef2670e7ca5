"""``fsfm bench``: engine-only, per-stage and end-to-end service benchmarks, and the performance
report (docs/performance.md) they regenerate. Numbers are printed, never asserted."""
