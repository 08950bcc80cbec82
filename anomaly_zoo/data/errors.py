"""The one exception type for bad datasets: it always names the file or option at fault."""


class DatasetError(ValueError):
    """A dataset on disk (or its configuration) is missing, incomplete or malformed."""
