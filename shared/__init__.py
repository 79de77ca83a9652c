"""flowwatch shared package: settings, message contract, topics, bus, event time, stores, service base."""
