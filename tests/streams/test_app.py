"""The Faust app's settings that are Herald's choice, not Faust's defaults."""
from __future__ import annotations

import asyncio

from herald.settings import Settings
from streams.app import create_app


def test_the_worker_consumer_fetches_with_herald_s_wait_and_the_standby_replicas_set(tmp_path):
    async def made() -> tuple[int, int]:
        app = create_app(Settings(app_id="test-app-settings", faust_fetch_max_wait_ms=70, standby_replicas=0,
                                  data_dir=str(tmp_path)))
        thread = app.consumer._thread  # the thread that owns Faust's aiokafka consumer
        consumer = thread._create_worker_consumer(app.transport)
        return consumer._fetch_max_wait_ms, app.conf.table_standby_replicas

    wait_ms, standbys = asyncio.run(made())
    assert wait_ms == 70  # not the 1,500 ms Faust hard-codes
    assert standbys == 0  # set, not Faust's default
    assert Settings().fetch_max_wait_ms == 100 and Settings().faust_fetch_max_wait_ms == 100
    assert Settings().standby_replicas == 1
    assert Settings().producer_linger_ms == 20  # 2 ms cost a third of the throughput on two cores


def test_the_pipeline_s_raw_key_shortcut_writes_the_bytes_faust_would(tmp_path):
    """The pipeline reads and writes the states' RocksDB files with ``str.encode`` as the key serializer:
    that must stay what the table's own serializer makes, or reads would miss what recovery wrote. (The
    preferences and presence tables keep Faust's JSON keys, and their reads go through it.)"""
    from streams.worker import create_worker

    async def keys() -> dict[str, bytes]:
        app = create_worker(Settings.from_env(app_id="test-raw-keys", data_dir=str(tmp_path)), register=False)
        return {name: app.tables[name].data._encode_key("user-é 1") for name in ("states", "preferences")}

    encoded = asyncio.run(keys())
    assert encoded["states"] == "user-é 1".encode()
    assert encoded["preferences"] == b'"user-\xc3\xa9 1"'  # JSON: why those tables take no shortcut


def test_a_rebuilt_worker_reports_the_assignment_its_last_run_saved(tmp_path):
    """What makes a worker killed and started again on the same disk get its partitions back."""
    from faust.assignor.client_assignment import ClientAssignment

    from streams import sticky
    from streams.worker import create_worker

    settings = Settings.from_env(app_id="test-sticky", data_dir=str(tmp_path))
    held = ClientAssignment(actives={"t.events": [1, 3]}, standbys={"t.events": [0]})

    async def run_once() -> None:
        app = create_worker(settings, register=False)
        assert app.assignor._assignment.actives == {}  # nothing saved yet: a fresh worker
        remember = sticky.keep_assignment(app, tmp_path)
        app.assignor._assignment = held  # what the group gave it
        await remember(app, assigned=set())  # what a rebalance runs

    async def reported() -> ClientAssignment:
        return create_worker(settings, register=False).assignor._assignment

    asyncio.run(run_once())
    again = asyncio.run(reported())
    assert (again.actives, again.standbys) == ({"t.events": [1, 3]}, {"t.events": [0]})
    (tmp_path / sticky.FILE).write_text("{not json")
    assert asyncio.run(reported()).actives == {}  # a broken file is ignored, not fatal


def test_the_worker_fences_the_partitions_previous_owners_before_its_tables_restore(tmp_path):
    """Exactly-once: the transactional producers of the partitions assigned are claimed (fencing their previous
    owners, whose last commit then either lands or is aborted) before the tables' recovery reads where the
    changelogs end; the events and ticks are read from those partitions afterwards, claimed once."""
    from faust.types import TP

    from streams.worker import create_worker

    settings = Settings.from_env(app_id="test-fence", data_dir=str(tmp_path), exactly_once=True)
    order: list[tuple] = []

    async def scenario() -> None:
        app = create_worker(settings, register=False)
        pipeline = app.herald_pipeline
        pipeline.outbox.claim = lambda partitions: order.append(("claim", sorted(partitions)))
        pipeline.feed.assign = lambda partitions: order.append(("read", sorted(partitions)))
        if pipeline.watcher is not None:
            pipeline.watcher.assign = lambda partitions: order.append(("watch", sorted(partitions)))

        async def recovery_on_rebalance(assigned, revoked, newly_assigned, generation_id=0) -> None:
            order.append(("restore", sorted(tp.partition for tp in assigned if tp.topic == preferences)))

        async def no_consumer() -> None:  # the manager asks the consumer (not started here) for its assignment
            pass

        app.tables.recovery.on_rebalance = recovery_on_rebalance
        app.tables._update_channels = no_consumer
        preferences = settings.topic("preferences")
        assigned = {TP(preferences, 1), TP(preferences, 3), TP(settings.topic("presence"), 1)}
        await app.tables.on_rebalance(assigned, set(), assigned, 1)  # as Faust's assignment runs them
        await app.on_partitions_assigned.send(assigned)

    asyncio.run(scenario())
    expected = [("claim", [1, 3]), ("restore", [1, 3]), ("read", [1, 3])]
    assert [step for step in order if step[0] != "watch"] == expected


def test_a_worker_built_and_never_run_does_not_dial_the_broker(tmp_path, capfd):
    """The feed's consumer and the outbox's producer are made at first use: librdkafka clients dial their
    bootstrap servers from the moment they exist, and a worker built only to be inspected would keep
    reporting refused connections to stderr for as long as it lives."""
    import socket

    from streams.worker import create_worker

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def built() -> None:
        create_worker(Settings.from_env(kafka_bootstrap=f"127.0.0.1:{port}", app_id="test-no-dial",
                                        data_dir=str(tmp_path)), register=False)
        await asyncio.sleep(1.5)

    asyncio.run(built())
    assert f"127.0.0.1:{port}" not in capfd.readouterr().err
