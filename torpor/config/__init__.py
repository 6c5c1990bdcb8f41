"""Instance configuration: the YAML schema, layering of default/instance/override files, templates."""

from torpor.config.layering import load_effective, load_template_text
from torpor.config.schema import Config

__all__ = ["Config", "load_effective", "load_template_text"]
