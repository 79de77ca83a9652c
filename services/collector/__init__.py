"""flowwatch collector service."""
