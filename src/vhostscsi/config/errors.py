"""The one exception type of the configuration layer."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration change or file that cannot be accepted.

    The message is a single line written for the admin (what is wrong, and what to do), so the
    shell can print it as is and the daemon can log it as is.
    """
