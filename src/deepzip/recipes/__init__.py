"""Shipped compression recipes (YAML): see deepzip.recipe for the schema and the loader."""
