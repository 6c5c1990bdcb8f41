"""The ``torpor`` command line: one small module per verb."""
