"""The checkpoint store's credentials, taken where the coordinator keeps them.

The central spec holds none: ``fedsilo/spec.py`` refuses options named as
credentials and URLs with user-info, because Prefect records the spec as a
flow-run parameter and every checkpoint records it in its metadata. The
store's filesystem gets its credentials from one of:

- the coordinator's environment, which fsspec's backends read themselves
  (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN`` or
  ``AWS_PROFILE`` for s3fs, ``GOOGLE_APPLICATION_CREDENTIALS`` for gcsfs,
  ``AZURE_STORAGE_*`` for adlfs);
- a Prefect Secret block named by ``storage_options.credentials_block``, whose
  value is a mapping of storage options (``{"key": ..., "secret": ...}``).
  :func:`resolve_storage_options` loads it and merges it into the options it
  returns, in memory, each time a store opens its filesystem; Prefect keeps
  the block encrypted in its database and the spec names only the block.

A silo's credentials never come through here: a silo reads its rows with its
own worker's environment or its own silo config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from fedsilo.errors import CheckpointError
from fedsilo.sources import CREDENTIALS_BLOCK


def resolve_storage_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return storage options with ``credentials_block`` replaced by its mapping.

    Options without it are returned as they are. A missing block, or one whose
    value is not a mapping, is a ``CheckpointError`` naming the block, never
    its value.
    """
    out = dict(options or {})
    name = out.pop(CREDENTIALS_BLOCK, None)
    if name is None:
        return out
    from prefect.blocks.system import Secret

    where = f"storage_options.{CREDENTIALS_BLOCK} {name!r}"
    try:
        # _sync: the blocking call even if a caller runs inside an event loop.
        block = cast("Secret[Any]", Secret.load(name, _sync=True))  # type: ignore[call-arg]
        value = block.get()
    except (ValueError, LookupError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{where}: cannot load the Prefect Secret block: {first}"
        ) from None
    if not isinstance(value, dict):
        raise CheckpointError(
            f"{where}: the Secret block must hold a mapping of storage options "
            f"(JSON object), not a {type(value).__name__}"
        )
    return {**out, **value}
