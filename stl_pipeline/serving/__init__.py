"""Serving: a searchable index of product vectors, recommendations and their gallery."""
