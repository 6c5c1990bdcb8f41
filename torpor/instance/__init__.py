"""Instance operations (create, start, stop, delete): what the CLI verbs call."""
