"""The instance store: instance directories under ``$TORPOR_HOME``, their files, status and locks."""
