"""Exceptions for user mistakes: the CLI prints their message as one line and exits non-zero."""


class OmniError(Exception):
    """Base class of every error caused by user input (recipe, data file, plugin name)."""


class ConfigError(OmniError):
    """A recipe or override is invalid; the message names the field."""


class PluginError(OmniError):
    """An unknown plugin name, or a plugin that failed to load; the message lists known names."""


class DataError(OmniError):
    """A data file or data source is missing or malformed; the message names the file."""
