"""One exception family: every user-facing failure says what is wrong and how to fix it."""


class SddBenchError(Exception):
    """Base class. The CLI prints ``str(err)`` and exits 2, without a traceback."""


class ConfigError(SddBenchError):
    """A config value, YAML file or CLI override is invalid."""


class RegistryError(SddBenchError):
    """An unknown or broken plugin name."""


class DataError(SddBenchError):
    """A dataset is missing, corrupt (checksum) or malformed."""


class ModelError(SddBenchError):
    """A model cannot be built or loaded."""


class TrainingDivergedError(SddBenchError):
    """Training produced a non-finite loss, gradient norm or weights: the stage failed, nothing was stored."""
