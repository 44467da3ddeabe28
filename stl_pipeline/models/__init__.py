"""Models over the STL graph: GNN encoders, query projections, the triplet head, and losses."""
