"""The heterogeneous PyG graph of products, scenes and categories."""
