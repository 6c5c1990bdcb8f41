"""The guest side: building the default guest from Debian packages, and what runs inside it."""
