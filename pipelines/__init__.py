"""Pipelines: the event model, validation, event directories, data sources, and (later) the
Flink, Beam and TFX pipelines composed from them."""
