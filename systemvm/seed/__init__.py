"""seed phase."""
