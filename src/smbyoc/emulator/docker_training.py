"""Docker mode for training: ``docker run IMAGE train`` per host, as SageMaker does.

Per job: one bridge network; per host: a container whose hostname and network alias are the host name
(``algo-1``...), at a fixed address on that network with an ``/etc/hosts`` entry for every host of the
job (Docker's DNS forgets a container once it stops, while on SageMaker every host stays resolvable
until the job ends: see :func:`create_job_network`), with the host's ``/opt/ml`` parts bind-mounted
(``input`` (FastFile channels read-only), ``model``, ``output``, ``checkpoints``, and ``code`` only when
the user gave source code, so code baked into the image at ``/opt/ml/code`` stays visible),
``TRAINING_JOB_NAME``/``TRAINING_JOB_ARN`` and the job's environment, and the CPU/memory of the instance
type. Stopping is ``docker stop -t 120`` (SIGTERM, then SIGKILL). Containers and the network are always
removed, and files written inside the containers are given back to the invoking user.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from smbyoc import exit_codes
from smbyoc.docker.client import translate_docker_errors
from smbyoc.emulator import containers
from smbyoc.emulator.containers import HostLineSink
from smbyoc.emulator.instance_types import InstanceType
from smbyoc.emulator.job_spec import TrainingJobSpec
from smbyoc.emulator.layout import HostTree
from smbyoc.emulator.result import HostOutcome
from smbyoc.errors import ConfigError, DockerError

log = logging.getLogger(__name__)

CONTAINER_ML = "/opt/ml"


class ContainerJob(Protocol):
    """What the Docker job engine reads of a job (a training job's or a processing job's spec)."""

    @property
    def job_name(self) -> str: ...

    @property
    def network_isolation(self) -> bool: ...

    @property
    def instance_type(self) -> str: ...

    @property
    def instance(self) -> InstanceType: ...

    @property
    def gpu_count(self) -> int: ...


SpecT = TypeVar("SpecT", bound=ContainerJob)


def print_line(host: str, line: str) -> None:
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


def prefixed_printer(hosts: int) -> HostLineSink:
    """Each log line prefixed with its host (``[algo-1] ...``), as the CloudWatch streams name them."""

    def sink(host: str, line: str) -> None:
        sys.stdout.write(f"[{host}] {line}\n")
        sys.stdout.flush()

    return sink


def shm_size_for(memory_bytes: int | None) -> str:
    """Docker's 64 MB /dev/shm breaks PyTorch data loaders; SageMaker hosts have far more. Half the
    instance's memory, at most 8 GiB; 1 GiB when there is no limit."""
    if memory_bytes is None:
        return "1g"
    return f"{min(memory_bytes // 2, 8 * 1024**3) // (1024 * 1024)}m"


def gpu_device_requests(count: int) -> list[Any]:
    """``--gpus`` for the engine: ``count`` GPUs, ``-1`` all, ``0`` none (``docker run --gpus N``)."""
    if count == 0:
        return []
    import docker.types

    return [docker.types.DeviceRequest(count=count, capabilities=[["gpu"]])]


def neuron_devices_for(spec: ContainerJob, dev: Path = Path("/dev")) -> list[str]:
    """``/dev/neuron*`` mappings for a Neuron instance type; ConfigError when this machine has none."""
    wanted = spec.instance.neuron_devices
    if wanted == 0:
        return []
    present = sorted(dev.glob("neuron[0-9]*"), key=lambda p: int(p.name.removeprefix("neuron") or 0))
    if not present:
        raise ConfigError(f"{spec.instance_type} has {wanted} Neuron device(s) but this machine has no "
                          f"{dev}/neuron* devices (install the Neuron driver, or use a CPU instance type)",
                          key=f"--instance-type {spec.instance_type}")
    return [f"{p}:{p}:rwm" for p in present[:wanted]]


def explain_start_error(error: Exception, host: str) -> Exception:
    """Engine errors at start, in one line; a GPU request on an engine without GPU support in particular."""
    text = str(getattr(error, "explanation", None) or error)
    if "capabilities: [[gpu]]" in text or "nvidia" in text.lower():
        return DockerError(f"{host}: the Docker Engine cannot give this container GPUs ({text.strip()}); "
                           "install the NVIDIA Container Toolkit, or use a CPU instance type / --gpus 0")
    return DockerError(f"{host}: the container did not start: {text.strip()}")


#: Attempts at claiming the subnet Docker chose (another network may take it in between).
SUBNET_ATTEMPTS = 5


def host_addresses(subnet: str, gateway: str | None, hosts: Sequence[str]) -> dict[str, str]:
    """A fixed address in ``subnet`` for every host (``algo-1`` first), skipping the gateway."""
    network = ipaddress.ip_network(subnet)
    taken = {ipaddress.ip_address(gateway) if gateway else network.network_address + 1}
    free = (address for address in network.hosts() if address not in taken)
    addresses = {host: str(address) for host, address in zip(hosts, free, strict=False)}
    if len(addresses) < len(hosts):
        raise DockerError(f"the job network's subnet {subnet} has room for {len(addresses)} hosts, "
                          f"not {len(hosts)}")
    return addresses


def _ipv4_pool(network: Any) -> tuple[str, str | None]:
    network.reload()
    for pool in (network.attrs.get("IPAM") or {}).get("Config") or []:
        subnet = pool.get("Subnet", "")
        if subnet and ipaddress.ip_network(subnet).version == 4:
            return subnet, pool.get("Gateway") or None
    raise DockerError(f"the Docker Engine gave network {network.name} no IPv4 subnet")


def create_job_network(client: Any, name: str, hosts: Sequence[str], *, internal: bool,
                       labels: Mapping[str, str]) -> tuple[Any, dict[str, str]]:
    """The job's bridge network and a fixed address on it for every host.

    Containers need a subnet given at creation for fixed addresses, so Docker first picks a free one
    (it knows its other networks, the host's routes and its configured address pools) for a throwaway
    network, which is then created again with that subnet stated.
    """
    import docker.errors
    import docker.types

    for attempt in range(1, SUBNET_ATTEMPTS + 1):
        probe = client.networks.create(name, driver="bridge", internal=internal, labels=dict(labels),
                                       check_duplicate=True)
        try:
            subnet, gateway = _ipv4_pool(probe)
        finally:
            containers.remove_quietly(probe, "job network")
        addresses = host_addresses(subnet, gateway, hosts)
        pool = docker.types.IPAMPool(subnet=subnet, gateway=gateway)
        try:
            network = client.networks.create(name, driver="bridge", internal=internal, labels=dict(labels),
                                             check_duplicate=True,
                                             ipam=docker.types.IPAMConfig(pool_configs=[pool]))
        except docker.errors.APIError as e:
            if attempt < SUBNET_ATTEMPTS and "overlap" in str(e).lower():
                log.debug("subnet %s was taken meanwhile (%s); trying again", subnet, e)
                continue
            raise
        log.debug("job network %s: %s", name, addresses)
        return network, addresses
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class DockerJobBackend(Generic[SpecT]):
    """One container per host of a job on one network, started together and waited for; a host that fails
    stops the others; ``stop`` is ``docker stop -t stop_timeout``. Subclasses say what runs in each
    container (:meth:`process_args`): ``train`` for training, the image's entrypoint for processing."""

    client: Any
    image: str
    code_dir: Path | None = None
    stop_timeout: float = 120.0
    user: str | None = None
    sink: HostLineSink | None = None
    owner: tuple[int, int] = field(default_factory=containers.invoking_owner)
    chown_with_container: bool = False
    name: str = "docker"
    _containers: list[Any] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _interrupted: set[str] = field(default_factory=set, init=False, repr=False)
    _hosts: list[str] = field(default_factory=list, init=False, repr=False)
    #: Set once every container has started (the job's lifecycle timers count from here).
    started: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    # -- checks before anything starts ----------------------------------------------------------
    def preflight(self, spec: SpecT) -> None:
        """Refuse, with one line, what cannot run here: a missing image, an image for another platform than the
        instance type's, Neuron devices that are absent.
        Called once per job, before anything is created; ``run`` does not look the image up again."""
        containers.require_image(self.client, self.image, instance_type=spec.instance_type)
        neuron_devices_for(spec)

    # -- container definition ------------------------------------------------------------------
    def process_args(self, spec: SpecT, tree: HostTree) -> dict[str, Any]:
        """What runs in ``tree.host``'s container: ``command``/``entrypoint``, ``environment``, ``volumes``
        (and any other ``containers.create`` argument of the job's kind)."""
        raise NotImplementedError

    def container_args(self, spec: SpecT, tree: HostTree, network: str, suffix: str,
                       addresses: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``containers.create`` arguments; ``addresses`` (every host's fixed address on ``network``) pins
        this host's address and lists every host in its ``/etc/hosts``."""
        instance = spec.instance
        args: dict[str, Any] = {
            "image": self.image,
            "name": f"{spec.job_name[:40]}-{tree.host}-{suffix}",
            "hostname": tree.host,
            **self.process_args(spec, tree),
            "labels": containers.labels(spec.job_name, tree.host),
            "shm_size": shm_size_for(instance.memory_bytes),
            "detach": True,
        }
        if network == "none":
            args["network_mode"] = "none"
        else:
            args["network"] = network
            address = addresses.get(tree.host) if addresses else None
            args["networking_config"] = {network: self.client.api.create_endpoint_config(
                aliases=[tree.host], ipv4_address=address)}
            if addresses:
                args["extra_hosts"] = dict(addresses)
        requests = gpu_device_requests(spec.gpu_count)
        if requests:
            args["device_requests"] = requests
        devices = neuron_devices_for(spec)
        if devices:
            args["devices"] = devices
        args.update(containers.resource_args(instance, self.user))
        return args

    # -- running -------------------------------------------------------------------------------
    def run(self, spec: SpecT, trees: Sequence[HostTree]) -> list[HostOutcome]:
        """Run the job's containers (processes) to their end. A :meth:`stop` made before it starts (Ctrl-C as the
        job starts) is kept: nothing runs, or the program is stopped at once; the flag is cleared at the end
        (a spot restart runs again on the same backend)."""
        try:
            return self._run(spec, trees)
        finally:
            self._stopping.clear()

    def _run(self, spec: SpecT, trees: Sequence[HostTree]) -> list[HostOutcome]:
        self.started.clear()
        self._interrupted.clear()
        suffix = containers.unique_suffix()
        if self.code_dir is not None:
            for tree in trees:
                shutil.rmtree(tree.paths.code_dir, ignore_errors=True)
                shutil.copytree(self.code_dir, tree.paths.code_dir, symlinks=False)
        if self.user is not None:
            uid, _, gid = self.user.partition(":")
            for tree in trees:
                containers.chown_tree(self.client, self.image, tree.root, (int(uid), int(gid or uid)),
                                      use_container=False)
        network = None
        addresses: dict[str, str] = {}
        try:
            with translate_docker_errors(f"run job {spec.job_name}"):
                if spec.network_isolation and len(trees) == 1:
                    network_name = "none"  # no interface but loopback
                else:
                    # With isolation and several hosts the hosts still reach each other (as SageMaker
                    # allows for distributed training), but an internal network has no route out.
                    network, addresses = create_job_network(
                        self.client, f"smbyoc-{spec.job_name[:40]}-{suffix}", [t.host for t in trees],
                        internal=spec.network_isolation, labels=containers.labels(spec.job_name))
                    network_name = network.name
                for tree in trees:
                    container = self.client.containers.create(
                        **self.container_args(spec, tree, network_name, suffix, addresses))
                    with self._lock:
                        self._containers.append(container)
                        self._hosts.append(tree.host)
                return self._start_and_wait(trees)
        finally:
            with self._lock:
                created, self._containers, self._hosts = list(self._containers), [], []
            for container in created:
                containers.remove_quietly(container, container.name)
            containers.remove_quietly(network, "job network")
            for tree in trees:
                if self.user is not None or self.owner != (0, 0) or self.chown_with_container:
                    containers.chown_tree(self.client, self.image, tree.root, self.owner,
                                          use_container=self.chown_with_container)

    def _start_and_wait(self, trees: Sequence[HostTree]) -> list[HostOutcome]:
        sink = self.sink or prefixed_printer(len(trees))
        threads = []
        for container, tree in zip(self._containers, trees, strict=True):
            if self._stopping.is_set():
                break
            try:
                container.start()
            except Exception as e:
                raise explain_start_error(e, tree.host) from e
            threads.append(containers.stream_logs(container, tree.host, sink))
        self.started.set()
        outcomes: dict[str, int] = {}
        results: dict[str, int] = {}
        waiters = []
        for container, tree in zip(self._containers, trees, strict=True):
            waiter = threading.Thread(target=self._wait_one, args=(container, tree.host, results), daemon=True)
            waiter.start()
            waiters.append(waiter)
        for waiter in waiters:
            while waiter.is_alive():
                waiter.join(0.2)
        for thread in threads:
            thread.join(5)
        for tree in trees:
            outcomes[tree.host] = results.get(tree.host, exit_codes.INTERNAL)
        return [HostOutcome(tree.host, outcomes[tree.host], stopped_by_emulator=tree.host in self._interrupted)
                for tree in trees]

    def _wait_one(self, container: Any, host: str, results: dict[str, int]) -> None:
        try:
            status = container.wait()
            code = int(status.get("StatusCode", exit_codes.INTERNAL))
        except Exception as e:
            log.error("%s: lost track of the container: %s", host, e)
            code = exit_codes.INTERNAL
        with self._lock:
            results[host] = code
            if code == 0 or self._stopping.is_set() or host in self._interrupted:
                return
            others = [(c, h) for c, h in zip(self._containers, self._hosts, strict=False)
                      if c is not container and h not in results]
            self._interrupted.update(h for _, h in others)
        if others:
            log.error("%s failed with exit status %d: stopping the other hosts (%s)", host, code,
                      ", ".join(h for _, h in others))
            self._stop_containers([c for c, _ in others])

    def _stop_containers(self, targets: list[Any]) -> None:
        def stop(container: Any) -> None:
            try:
                container.stop(timeout=int(self.stop_timeout))
            except Exception as e:
                log.debug("stop %s: %s", getattr(container, "name", "?"), e)

        for container in targets:
            threading.Thread(target=stop, args=(container,), daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            targets = list(self._containers)
        self._stop_containers(targets)

    def kill(self) -> None:
        with self._lock:
            targets = list(self._containers)
        for container in targets:
            try:
                container.kill()
            except Exception as e:
                log.debug("kill %s: %s", getattr(container, "name", "?"), e)


@dataclass
class DockerTrainingBackend(DockerJobBackend[TrainingJobSpec]):
    """``docker run IMAGE train`` per host (see the module docstring)."""

    def mounts(self, spec: TrainingJobSpec, tree: HostTree) -> dict[str, dict[str, str]]:
        paths = tree.paths
        volumes = {
            str(paths.input_dir): {"bind": f"{CONTAINER_ML}/input", "mode": "rw"},
            str(paths.model_dir): {"bind": f"{CONTAINER_ML}/model", "mode": "rw"},
            str(paths.output_dir): {"bind": f"{CONTAINER_ML}/output", "mode": "rw"},
            str(paths.checkpoints_dir): {"bind": f"{CONTAINER_ML}/checkpoints", "mode": "rw"},
        }
        for channel in spec.channels:
            if channel.input_mode == "FastFile":
                volumes[str(paths.channel_dir(channel.name))] = {
                    "bind": f"{CONTAINER_ML}/input/data/{channel.name}", "mode": "ro"}
        if self.code_dir is not None:
            volumes[str(paths.code_dir)] = {"bind": f"{CONTAINER_ML}/code", "mode": "rw"}
        return volumes

    def process_args(self, spec: TrainingJobSpec, tree: HostTree) -> dict[str, Any]:
        environment = {"TRAINING_JOB_NAME": spec.job_name, "TRAINING_JOB_ARN": spec.job_arn,
                       **spec.environment}
        if spec.network_isolation:
            # The runtime then fails a requirements.txt install at once with its clear error instead of
            # timing out against an unreachable index (set it in --env to choose otherwise).
            environment.setdefault("SMBYOC_ALLOW_REQUIREMENTS_INSTALL", "false")
        return {"command": ["train"], "environment": environment, "volumes": self.mounts(spec, tree)}
