"""flowwatch forecaster service."""
