"""flowwatch services: one package per service."""
