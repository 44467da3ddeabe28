"""The evaluation protocol of DESIGN.md section 2: retrieval over held-out test scenes."""
