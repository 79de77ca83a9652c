"""flowwatch exporter service."""
