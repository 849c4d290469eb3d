"""The flow's last request to the Dask workers (send the task logs they still hold) is best effort.

That the logs then reach the run's API is tested end to end in test_cluster.py.
"""

from __future__ import annotations

import logging

from distributed import Client, LocalCluster

from flows.shards import send_worker_logs


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
