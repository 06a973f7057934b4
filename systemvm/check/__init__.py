"""check phase."""
