"""The detector's rules: one module per rule, pure (no I/O, no clock), each with its own state.

The engine (``services/detector/engine.py``) keeps each meter's state, asks the rules about every
reading, and turns what they say (an ``alerts.Condition`` for an alert, an ``alerts.Event`` for a
single-reading finding) into alerts with ``services/detector/alerts.py``.

- validity.py    invalid: missing / NaN, negative flow, outside the physical range
- liveness.py    gap (event time) and silent (wall clock)
- flatline.py    flatline: a signal that does not move
- spike.py       spike: an isolated outlier from the rolling median
- thresholds.py  threshold: the band of the local hour and day type; learning the bands, and when
- forecast.py    forecast_deviation: sustained distance from the latest forecast
- pressure.py    pressure_loss
- burst.py       burst: a flow step up with a pressure step down
- nightflow.py   night_flow: the minimum night flow over its baseline (leak suspected)
"""
