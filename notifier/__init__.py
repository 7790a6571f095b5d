"""notifier: tell a consultation's stakeholders what they need to know, once, on time."""

__version__ = "0.1.0"
