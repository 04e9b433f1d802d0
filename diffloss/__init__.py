"""diffloss."""
