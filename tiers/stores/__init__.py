"""Tier stores, one module per medium.

Local memory: ``arena`` (the preallocated byte arena and its span allocator, shared by every
arena-backed store), ``dram`` (host DRAM), ``numa`` (an arena bound to a NUMA node, or an
emulated remote socket where the machine has one node), ``emulated`` (a wrapper that adds stated
latency and bandwidth to any store) and ``cuda`` (GPU HBM through torch, imported only when used).
"""
