"""flowwatch detector service."""
