"""How `llie run` names the end of a run that a signal stopped."""

from __future__ import annotations

import signal

from prefect.states import Completed, Failed

from llie_cli.run import stopped_by


def test_a_termination_signal_wrapped_by_task_submission_counts_as_sigterm():
    # what Prefect's SIGTERM bridge leaves when the signal lands while pydantic serialises a submission
    wrapped = Failed(
        message="Flow run encountered an exception: PydanticSerializationError: Error calling function "
        "`_ser_model`: TerminationSignal: "
    )
    assert stopped_by(wrapped) == signal.SIGTERM


def test_other_failures_and_completed_runs_were_not_stopped():
    assert stopped_by(Failed(message="Flow run encountered an exception: ValueError: no such bucket")) is None
    assert stopped_by(Completed()) is None
