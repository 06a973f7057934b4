"""Build, export, boot, test and seed Apache CloudStack System VM templates."""

__version__ = "0.1.0"
