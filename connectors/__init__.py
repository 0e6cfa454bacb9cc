"""fedsilo connectors: each reads one kind of silo source at the silo.

Importing the package registers the built-in readers (paths and URLs of
Parquet/CSV files, SQL); ``connectors.readers.read_source`` reads any
registered kind.
"""

from connectors import files, sql

__all__ = ["files", "sql"]
