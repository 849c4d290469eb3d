"""The flow's last requests to the Dask workers (send the task logs they still hold, then print nothing more)
are best effort.

That the logs then reach the run's API is tested end to end in test_cluster.py.
"""

from __future__ import annotations

import logging

from distributed import Client, LocalCluster

from flows.shards import mute_local_workers, send_worker_logs


def test_asking_workers_for_their_logs_is_quiet_and_a_lost_scheduler_only_warns(caplog):
    logger = logging.getLogger("test-worker-logs")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        client = Client(cluster)
        with caplog.at_level(logging.WARNING, logger="test-worker-logs"):
            send_worker_logs(client, logger)
        assert caplog.records == []
        client.close()
        with caplog.at_level(logging.WARNING, logger="test-worker-logs"):
            send_worker_logs(client, logger)  # must not raise: the shards are done, the run goes on
    assert len(caplog.records) == 1
    assert "last task logs may be missing" in caplog.records[0].getMessage()


def test_local_workers_print_nothing_once_muted_for_the_teardown(capfd):
    """A heartbeat that meets the closing scheduler logs an ERROR and a traceback on the worker's terminal."""
    worker_log = logging.getLogger("distributed.worker")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            client.run(worker_log.error, "llie-probe before")
            mute_local_workers(client)
            client.run(worker_log.error, "llie-probe after")
            client.run(worker_log.critical, "llie-probe critical")
            printed = capfd.readouterr().err
            mute_local_workers(client)  # twice is harmless
        mute_local_workers(client)  # a closed client: nothing to quiet, no error
    assert "llie-probe before" in printed
    assert "llie-probe after" not in printed
    assert "llie-probe critical" not in printed
