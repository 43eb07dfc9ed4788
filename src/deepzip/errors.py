"""The one error hierarchy of deepzip: every failure a user can cause is a DeepzipError."""


class DeepzipError(Exception):
    """Base class of every error deepzip raises on bad input; the CLI prints it as one line."""


class FormatError(DeepzipError, ValueError):
    """A .dzip file (or an encoded stream inside it) is damaged, truncated or not a .dzip."""


class ConfigError(DeepzipError, ValueError):
    """A setting is invalid: unknown layer pattern, bits out of range, bad sparsity."""


class DataNotFoundError(DeepzipError, FileNotFoundError):
    """The data set could not be found; the message says where to put the files."""


class ChecksumError(FormatError):
    """A CRC-32 of the header or of a section does not match: the bytes were altered."""


class TruncatedError(FormatError):
    """The file, or a field or section inside it, ends before its declared size."""


class VersionError(FormatError):
    """The file was written in a format version this deepzip does not read."""
