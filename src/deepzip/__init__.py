from deepzip.errors import DeepzipError, FormatError, ConfigError, DataNotFoundError
