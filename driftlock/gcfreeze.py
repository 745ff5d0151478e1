"""Keep start-up objects out of the garbage collector's full collections.

A service loads tens of thousands of long-lived objects at start (modules, the detectors'
compiled code and its metadata, pydantic models). Every full collection walked all of them:
400 ms with nothing to collect in a node, 100+ ms in the gateway, and every message or
request in flight waited that long. Frozen, they are never walked again.
"""

import gc


def freeze_long_lived() -> None:
    """Call once start-up is done: what exists now lives as long as the process."""
    gc.collect()
    gc.freeze()
