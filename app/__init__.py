"""The application layer: the ``flowwatch`` command and its tools, above the services.

Layers only look down: ``bench/`` -> ``app/`` -> ``services/`` -> ``shared/`` (the kernel).
"""
