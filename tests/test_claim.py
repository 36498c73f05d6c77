"""Who trains a candidate when two workers want it at once: ``claim`` interleaved by hand.

The subprocess test in ``test_search_reliability.py`` runs two real ``archsearch run`` on one
study and can only hope to hit the window; here two workers' calls are put in the order that
used to train one candidate twice, deterministically.
"""

from __future__ import annotations

import json
import os
import socket

import optuna

from archsearch.search import claim

CID = "7fa92f27fa90"


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=["minimize"])


def _start(study: optuna.Study) -> optuna.Trial:
    trial = study.ask()
    trial.set_user_attr("owner", f"{socket.gethostname()}:{os.getpid()}")  # a live process
    return trial


def _finish(study: optuna.Study, trial: optuna.Trial, value: float = 0.5) -> None:
    trial.set_user_attr("candidate", json.dumps({"id": CID}))
    study.tell(trial, [value])


class _PeerFinishesAfterFirstRead:
    """The study as worker B sees it while worker A's trial finishes right after B's first
    read of the trials (A's ``tell`` does not take the study lock)."""

    def __init__(self, study: optuna.Study, finish) -> None:
        self._study, self._finish, self.reads = study, finish, 0

    def get_trials(self, *args, **kwargs):
        out = self._study.get_trials(*args, **kwargs)
        self.reads += 1
        if self.reads == 1:
            self._finish()
        return out

    def __getattr__(self, name):
        return getattr(self._study, name)


def test_the_second_worker_waits_then_reuses_the_first_ones_result():
    study = _study()
    a, b = _start(study), _start(study)
    assert claim(study, a, CID, wait=False) == ("train", None)
    decision, peer = claim(study, b, CID, wait=False)
    assert decision == "wait" and peer.number == a.number
    assert "trains_candidate" not in study.trials[b.number].user_attrs
    _finish(study, a)
    decision, previous = claim(study, b, CID, wait=False)
    assert decision == "reuse" and previous.number == a.number


def test_a_peer_finishing_between_two_reads_is_not_trained_again():
    study = _study()
    a, b = _start(study), _start(study)
    assert claim(study, a, CID, wait=False)[0] == "train"
    seen = _PeerFinishesAfterFirstRead(study, lambda: _finish(study, a))
    decision, peer = claim(seen, b, CID, wait=False)
    # B decided on one snapshot, taken while A still ran: wait for A, never train
    assert decision == "wait" and peer.number == a.number
    assert "trains_candidate" not in study.trials[b.number].user_attrs
    assert claim(study, b, CID, wait=False)[0] == "reuse"


def test_a_dead_peer_does_not_block_the_candidate():
    study = _study()
    a, b = _start(study), _start(study)
    assert claim(study, a, CID, wait=False)[0] == "train"
    study._storage.set_trial_user_attr(a._trial_id, "owner", f"{socket.gethostname()}:999999999")  # gone
    assert claim(study, b, CID, wait=False) == ("train", None)
