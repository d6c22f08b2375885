"""One trial of the search (animalclf.tune.trial), without Ray: its MLflow child run under the
search's parent run, which a resumed trial continues instead of starting another. Running trials
under Tune is tests/test_search.py's (Ray)."""

from animalclf.config import TrainConfig
from animalclf.data.split import Split
from animalclf.tracking import Tracker
from animalclf.tune.trial import child_run, stop_flag, trial_run_id

SPLIT = Split(["a", "b"], [("/d/a0.jpg", 0), ("/d/b0.jpg", 1), ("/d/b1.jpg", 1)], [("/d/a1.jpg", 0)])


def test_a_trial_gets_one_child_run_and_a_resumed_trial_continues_it(store):
    cfg = TrainConfig(data="x", experiment="search-exp", lr=0.002)
    parent = Tracker.start("search-exp", "search", {"num_samples": 2})
    first = child_run(cfg, SPLIT, "t1", parent.run_id)
    run = store.get_run(first.run_id)
    assert run.info.run_name == "trial-t1"
    assert {k: run.data.tags[k] for k in ("mlflow.parentRunId", "animalclf.kind", "animalclf.trial_id")} == {
        "mlflow.parentRunId": parent.run_id, "animalclf.kind": "trial", "animalclf.trial_id": "t1"}
    assert run.data.params["lr"] == "0.002" and run.data.params["train_images"] == "3"
    assert child_run(cfg, SPLIT, "t1", parent.run_id).run_id == first.run_id  # resumed: the same run
    second = child_run(cfg, SPLIT, "t2", parent.run_id)
    other_search = Tracker.start("search-exp", "search-2")
    elsewhere = child_run(cfg, SPLIT, "t1", other_search.run_id)  # the same trial id under another search
    assert len({first.run_id, second.run_id, elsewhere.run_id}) == 3
    exp = store.get_experiment_by_name("search-exp").experiment_id
    children = store.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
    assert sorted(r.data.tags["animalclf.trial_id"] for r in children) == ["t1", "t2"]
    # The best trial's run, as the search's end names it (its parent's animalclf.best_trial tag)
    assert trial_run_id(parent.run_id) is None  # no best trial yet
    parent.set_tags({"animalclf.best_trial": "t2"})
    assert trial_run_id(parent.run_id) == second.run_id and trial_run_id(parent.run_id, "t1") == first.run_id
    assert trial_run_id(other_search.run_id, "t2") is None


def test_a_trial_is_stopped_once_its_tune_session_says_so(monkeypatch):
    import threading
    from types import SimpleNamespace

    import ray.train._internal.session as tune_session

    assert stop_flag()() is False  # outside Tune: never
    event = threading.Event()
    monkeypatch.setattr(tune_session, "_session", SimpleNamespace(stop_event=event))  # Tune's session, its one field read
    stopped = stop_flag()
    assert stopped() is False
    event.set()  # what FunctionTrainable.cleanup does when ASHA stops the trial
    assert stopped() is True
    monkeypatch.setattr(tune_session, "_session", SimpleNamespace(stop_event=threading.Event()))  # a reset session
    assert stopped() is True  # the flag taken at the trial's start still answers for that trial
