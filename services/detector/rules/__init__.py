"""The detector's rules: one module per rule, pure (no I/O, no clock), each with its own state.

The engine (``services/detector/engine.py``) keeps the per-meter state, asks each rule about every
reading and turns what the rules say into alerts (``services/detector/alerts.py``).
"""
