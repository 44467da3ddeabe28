"""Ingestion: raw STL JSON files to validated pair and product tables."""
