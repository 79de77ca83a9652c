"""Command-line tools of flowwatch (one module per command)."""
