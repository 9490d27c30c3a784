"""The one error of audio that cannot be used."""


class AudioError(Exception):
    """A source cannot be used; the message is one sentence about the file, without its path."""
