"""Training loops for the GNN recommenders: seeded, checkpointed, resumable, early-stopped."""
