"""flowwatch trainer service."""
