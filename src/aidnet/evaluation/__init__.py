"""Metrics, prediction files and figures (DESIGN.md, "Outputs")."""
