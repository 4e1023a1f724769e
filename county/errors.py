"""The one error every county store and database failure is: ``StoreError``.

It lives alone, importing nothing, because both the database layer (county/db/engine.py,
whose ``DatabaseError`` is a ``StoreError``) and the store's job modules
(county/storekit.py and those beside it) build on it: a caller that catches
``StoreError`` gets a one-line message for a person whichever of them refused.
"""


class StoreError(Exception):
    """The county database cannot do what was asked; the message says what to do."""
