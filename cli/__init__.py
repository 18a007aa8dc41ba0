"""tiertop: a live monitor and controller for tiered LLM KV-cache memory.

The distribution maps the top-level folders of the repository onto this package:
``tiers/`` is ``tiertop.tiers``, ``runtime/`` is ``tiertop.runtime`` and so on (see DESIGN.md).
This folder, ``cli/``, is the package root itself: the version and the ``tiertop`` command.
"""

__version__ = "0.1.0"
