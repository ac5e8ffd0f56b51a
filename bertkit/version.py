"""The package version, in a module of its own so that every layer (the CLI's ``--version``,
the server's ``/health``) can read it without importing the package's public API."""

__version__ = "0.1.0"
