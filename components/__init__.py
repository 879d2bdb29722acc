"""whisper-askd stage code: one pure function per stage plus the building blocks they share."""

__version__ = "0.1.0"
