"""The cluster simulator (``tiertop sim``): thousands of GPUs on a virtual clock.

- :mod:`.topology`: racks, GPUs, nodes, tiers, presets and config files;
- :mod:`.profile`: what hardware and model cost (a calibration TOML);
- :mod:`.router`: session affinity, prefix-aware scoring, load;
- :mod:`.cluster`: the discrete-event core over the tier library's hierarchies;
- :mod:`.service`: the live runtime (telemetry publisher and control server);
- :mod:`.replay`: headless runs and their JSON summary;
- :mod:`.synth`: synthetic traces with real reuse;
- :mod:`.sim_cli`: the ``tiertop sim`` command.
"""
