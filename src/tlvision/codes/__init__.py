"""CNN codes computed once: extraction passes of a frozen body, checksummed memory-mapped
shards, and the cache keyed by image content, backbone, weights, stage and transform.

Imports models, data, compute and the top-level modules.
"""
