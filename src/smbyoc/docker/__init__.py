"""The Docker Engine, as smbyoc talks to it: one client factory and one place that translates the docker
SDK's errors (:mod:`smbyoc.docker.client`). Used by the emulator (jobs, endpoints, sweeps) and the image
builder (:mod:`smbyoc.images`); importing this package imports nothing of the docker SDK."""
