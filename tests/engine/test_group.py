"""Runs trained together in one process give each exactly what it gets alone: same bits per
metric, a divergence stops only its member, and an interrupted group resumes every member."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from support.data import synthetic_data
from support.runs import L_HAT, Interrupt, untimed

from hw3.engine.data import FashionMNIST
from hw3.engine.train import Diverged, Member, Metrics, Settings, train, train_group

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = Settings(
    model="plain",
    lr=0.05,
    momentum=0.0,
    weight_decay=0.0,
    epochs=3,
    batch_size=32,
    seed=0,
    measure=L_HAT,
    chunk_size=100,
    cuda_graphs=True,
)
# Members that share nothing but the data and the batch size.
MEMBERS = [
    BASE,
    dataclasses.replace(BASE, model="bn", seed=1, momentum=0.9, weight_decay=1e-4),
    dataclasses.replace(BASE, model="stride", seed=2, lr=0.02, epochs=2),
]


@pytest.fixture(scope="module")
def data() -> FashionMNIST:
    return synthetic_data(n_train=200, n_test=64, seed=4)


def alone(data: FashionMNIST, s: Settings) -> list[Metrics]:
    """The run trained by itself through the single-run API."""
    fields = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
    return train(data, **fields, device="cpu", deterministic=True)


@pytest.mark.slow
def test_each_member_gets_the_bits_it_gets_alone(data: FashionMNIST):
    together = train_group(data, [Member(s) for s in MEMBERS], device="cpu", deterministic=True)
    assert [len(h) for h in together] == [3, 3, 2]
    for settings, history in zip(MEMBERS, together, strict=True):
        assert untimed(history) == untimed(alone(data, settings)), settings.model


def test_a_diverging_member_stops_alone(data: FashionMNIST):
    # Momentum 100 makes the steps grow geometrically: finite through pass 1, then non-finite
    # weights in pass 2, so the passes before the divergence are there to be logged.
    exploding = dataclasses.replace(BASE, seed=5, momentum=100.0)
    logged: list[int] = []
    members = [
        Member(MEMBERS[0]),
        Member(exploding, lambda epoch, metrics: logged.append(epoch)),
        Member(MEMBERS[1]),
    ]
    first, diverged, last = train_group(data, members, device="cpu", deterministic=True)
    assert isinstance(diverged, Diverged) and diverged.epoch == 2
    assert logged == [1]
    with pytest.raises(Diverged) as alone_error:
        alone(data, exploding)
    assert str(diverged) == str(alone_error.value)
    assert untimed(first) == untimed(alone(data, MEMBERS[0]))
    assert untimed(last) == untimed(alone(data, MEMBERS[1]))


@pytest.mark.slow
def test_an_interrupted_group_resumes_every_member_from_its_last_pass(
    data: FashionMNIST, tmp_path: Path
):
    logged: dict[int, list[int]] = {i: [] for i in range(len(MEMBERS))}

    def callback(i: int, stop_at: int | None):
        def on_pass_end(epoch: int, metrics: Metrics) -> None:
            logged[i].append(epoch)
            if epoch == stop_at:
                raise Interrupt

        return on_pass_end

    checkpoints = [tmp_path / f"{i}.pt" for i in range(len(MEMBERS))]
    members = [
        Member(s, callback(i, 2 if i == 1 else None), checkpoints[i]) for i, s in enumerate(MEMBERS)
    ]
    with pytest.raises(Interrupt):
        train_group(data, members, device="cpu", deterministic=True)
    # Pass by pass, member after member: member 0 finished pass 2, member 1 stopped after
    # saving and logging pass 2, member 2 never started pass 2.
    assert logged == {0: [1, 2], 1: [1, 2], 2: [1]}

    for history in logged.values():
        history.clear()
    resumed_members = [Member(s, callback(i, None), checkpoints[i]) for i, s in enumerate(MEMBERS)]
    resumed = train_group(data, resumed_members, device="cpu", deterministic=True)
    assert logged == {0: [1, 2, 3], 1: [1, 2, 3], 2: [1, 2]}  # replayed, then trained
    for settings, history in zip(MEMBERS, resumed, strict=True):
        assert untimed(history) == untimed(alone(data, settings)), settings.model


def test_members_must_share_the_batch_size(data: FashionMNIST):
    members = [Member(BASE), Member(dataclasses.replace(BASE, batch_size=16))]
    with pytest.raises(ValueError, match=r"share trainer\.batch_size"):
        train_group(data, members, device="cpu", deterministic=True)
