"""Scene-based fashion recommendation on Shop-the-Look data, as a Dagster asset lineage."""

__version__ = "0.1.0"
