"""Image building: the variant table, the host-resolved wheelhouse, the build context and the builder.

Nothing here is imported by the in-image runtime; the docker SDK is imported lazily.
"""
