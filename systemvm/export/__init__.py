"""export phase."""
