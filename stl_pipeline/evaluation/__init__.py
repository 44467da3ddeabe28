"""The evaluation protocol of docs/design.md, section 2: retrieval over held-out test scenes."""
