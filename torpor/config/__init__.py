"""Instance configuration: the YAML schema, layering of default/instance/override files, templates.

Import the modules themselves (``torpor.config.layering``, ``torpor.config.schema``): this package imports nothing,
so that ``torpor.config.sources`` stays light (the restore path reads it without loading pydantic).
"""
