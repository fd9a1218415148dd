"""Production and shadow variant routing (smbyoc.emulator.variants) with stand-in instances: the weighted split,
TargetVariant, weight updates, least-outstanding balancing, and a shadow that can never slow production (its queue
is bounded: copies beyond it are dropped and counted)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from helpers import run_on_front_loop as run
from smbyoc.emulator.front import Call, FrontError, Reply
from smbyoc.emulator.variants import EndpointRouter, Instance, Variant, shadow_share


class Answer:
    """A router answering at once, or only when released."""

    def __init__(self, name: str, gate: asyncio.Event | None = None) -> None:
        self.name = name
        self.gate = gate
        self.calls = 0
        self.in_flight_seen: list[int] = []

    async def open(self, session: Any) -> None: ...

    async def close(self) -> None: ...

    async def invoke(self, call: Call) -> Reply:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return Reply(200, self.name.encode(), {"Content-Type": "text/plain"})


class Handle:
    def _exit_reason(self) -> str | None:
        return None


def variant(name: str, weight: float = 1.0, instances: int = 1, gate: asyncio.Event | None = None,
            rng: random.Random | None = None) -> Variant:
    return Variant(name, [Instance(f"{name}-{i + 1}", Answer(f"{name}-{i + 1}", gate), Handle())
                          for i in range(instances)], weight, rng=rng)


CALL = Call(b"x", {"Content-Type": "text/plain"})


pytestmark = pytest.mark.usefixtures("front_event_loop")


def test_weighted_split_is_proportional_and_seedable() -> None:
    async def split(seed: int) -> Counter[str]:
        rng = random.Random(seed)
        router = EndpointRouter([variant("A", 1.0), variant("B", 3.0), variant("C", 0.0)], rng=rng)
        await router.open(None)
        return Counter([(await router.invoke(CALL)).variant or "" for _ in range(4000)])

    counts = run(split(1))
    # B ~ Binomial(4000, 0.75): mean 3000, sd 27.4; ±5 sd. C has weight 0: never drawn.
    assert 2863 <= counts["B"] <= 3137 and counts["C"] == 0, counts
    assert run(split(1)) == counts  # the same seed, the same draws


def test_target_variant_and_its_errors() -> None:
    async def scenario() -> None:
        router = EndpointRouter([variant("A"), variant("B", 0.0)], shadow=None, rng=random.Random(0))
        await router.open(None)
        targeted = Call(b"x", {"X-Amzn-SageMaker-Target-Variant": "B"})
        assert (await router.invoke(targeted)).variant == "B"  # weight 0 can still be targeted
        with pytest.raises(FrontError, match="TargetVariant Z does not exist"):
            await router.invoke(Call(b"x", {"X-Amzn-SageMaker-Target-Variant": "Z"}))

    run(scenario())


def test_update_weights_checks_everything_before_changing_anything() -> None:
    router = EndpointRouter([variant("A"), variant("B")], rng=random.Random(0))
    with pytest.raises(FrontError, match="VariantName Q does not exist"):
        router.update_weights({"A": 5.0, "Q": 1.0})
    for bad in (-1.0, float("nan"), float("inf")):  # NaN and infinity: a control request's JSON may carry them
        with pytest.raises(FrontError, match="DesiredWeight of A must be a finite number of at least 0"):
            router.update_weights({"A": bad})
    with pytest.raises(FrontError, match="At least one production variant"):
        router.update_weights({"A": 0.0, "B": 0.0})
    assert [v.weight for v in router.production] == [1.0, 1.0]
    router.update_weights({"A": 0.0})
    assert router.pick(None).name == "B"
    assert router.describe()["ProductionVariants"][0]["DesiredWeight"] == 0.0
    with pytest.raises(FrontError, match="At least one production variant"):
        EndpointRouter([variant("A", 0.0)])


def test_least_outstanding_requests_spreads_over_instances() -> None:
    async def scenario() -> list[int]:
        gate = asyncio.Event()
        v = variant("A", instances=3, gate=gate)
        router = EndpointRouter([v], rng=random.Random(0))
        await router.open(None)
        tasks = [asyncio.ensure_future(router.invoke(CALL)) for _ in range(6)]
        await asyncio.sleep(0.05)
        busy = [i.in_flight for i in v.instances]
        gate.set()
        await asyncio.gather(*tasks)
        return busy

    assert run(scenario()) == [2, 2, 2]


def test_a_stuck_shadow_never_slows_production_and_overflow_is_counted() -> None:
    async def scenario() -> EndpointRouter:
        stuck = asyncio.Event()  # never set: every shadow call hangs
        router = EndpointRouter([variant("Prod")], shadow=variant("Shadow", gate=stuck), shadow_queue=5,
                                shadow_timeout=30, rng=random.Random(0))
        await router.open(None)
        for _ in range(50):
            reply = await asyncio.wait_for(router.invoke(CALL), 1.0)  # production answers at once
            assert reply.body == b"Prod-1" and reply.variant == "Prod"
        await asyncio.sleep(0.05)
        await router.close()
        return router

    router = run(scenario())
    # 8 workers hold 8 copies, 5 wait in the queue, the other 37 were dropped
    assert router.shadow_stats.dropped == 50 - 8 - 5
    assert router.shadow.instances[0].router.calls == 8  # type: ignore[union-attr]


def test_shadow_sampling_share() -> None:
    assert shadow_share(1.0, 1.0) == 1.0
    assert shadow_share(0.1, 1.0) == pytest.approx(0.1)
    assert shadow_share(5.0, 1.0) == 1.0
    assert shadow_share(0.0, 1.0) == 0.0

    async def sampled() -> int:
        router = EndpointRouter([variant("P")], shadow=variant("S"), shadow_sampling=0.2, rng=random.Random(4))
        await router.open(None)
        for _ in range(2000):
            await router.invoke(CALL)
        await asyncio.sleep(0.05)
        assert router.shadow is not None
        return router.shadow.instances[0].router.calls  # type: ignore[attr-defined, no-any-return]

    copies = run(sampled())
    assert 320 <= copies <= 480  # Binomial(2000, 0.2): mean 400, sd 17.9
