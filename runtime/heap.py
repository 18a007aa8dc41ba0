"""Process-wide heap settings for a runtime process."""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Move everything set-up made (the model, tiers, sockets) out of the collector's sight.

    Called by ``tiertop run``/``sim`` once the runtime is built: a full collection walks every
    tracked object, and with a model loaded that is a pause of a few hundred ms in the engine
    loop (a control round trip or a tick that waits for it). Process-wide, hence not done by
    the runtime classes themselves (tests build many of them in one process)."""
    gc.collect()
    gc.freeze()
