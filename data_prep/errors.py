"""The one exception type of data_prep: every failure a user can act on."""


class DatasetError(ValueError):
    """A dataset or its source is unusable: missing or corrupt shard, checksum mismatch,
    unknown schema version, unreadable image under --strict, paired sizes that disagree,
    an existing directory without overwrite, or the leftover of an interrupted build.
    The message is one sentence that names the file or field."""
