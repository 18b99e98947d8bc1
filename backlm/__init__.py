"""backlm: language models that read and write forward, backward or both ways."""

__version__ = "0.1.0"
