"""boot phase."""
