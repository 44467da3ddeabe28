"""Embeddings of products, scenes and the two kinds of scene query, from a timm backbone."""
