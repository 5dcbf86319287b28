"""The one exception of the feature store."""


class StoreError(Exception):
    """A store that cannot be opened, written or trusted; the message names the path, video or key
    at fault and says what to do."""
