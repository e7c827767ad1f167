"""sonicpi-gen: Sonic Pi programs to a code-audio research dataset."""

__version__ = "0.1.0"
