"""The savepoint/build mapping (``runners.savepoints.compare``), pure; the savepoint reader
runs against a real savepoint in ``tests/test_cluster.py``."""
import pytest

from runners.savepoints import compare, local_path


def _op(uid: str, name: str | None = None) -> dict:
    return {"uid": uid, "id": f"id-{uid}", "name": name or uid}


def _state(uid: str, has_state: bool = True, finished: bool = False) -> dict:
    return {"uid": uid, "id": f"id-{uid}", "name": uid, "bytes": 100 if has_state else 0,
            "has_state": has_state, "finished": finished}


def test_a_savepoint_maps_onto_a_build_by_operator_id():
    build = [_op("labels/labels", "Source: labels[1]"), _op("labels/warmup_labels", "Source: warmup_labels[5]"),
             _op("dedup_join"), _op("sink_metrics")]
    saved = [_state("labels/labels", finished=True), _state("dedup_join"), _state("sink_updates"),
             _state("labels/Calc#9", has_state=False)]
    r = compare(build, saved)
    assert [o["uid"] for o in r.operators] == [o["uid"] for o in build]  # the build's order
    assert [o["uid"] for o in r.restored] == ["labels/labels", "dedup_join"]
    assert r.restored[0]["state"]["finished"]
    # a new source reads from the start; a new sink just starts empty
    assert [o["uid"] for o in r.new] == ["labels/warmup_labels", "sink_metrics"]
    assert [o["uid"] for o in r.new_sources] == ["labels/warmup_labels"]
    # only state Flink would refuse to drop is unmapped: an old operator without state is not
    assert [s["uid"] for s in r.unmapped] == ["sink_updates"]


def test_only_a_local_savepoint_with_metadata_is_read(tmp_path):
    with pytest.raises(ValueError, match="only a local savepoint"):
        local_path("s3://bucket/savepoint-1")
    with pytest.raises(ValueError, match="no savepoint"):
        local_path(str(tmp_path))
    (tmp_path / "_metadata").write_bytes(b"")
    assert local_path(tmp_path.as_uri()) == local_path(f"file:{tmp_path}") == local_path(str(tmp_path)) == tmp_path


def _vertex(name: str, ops: list[str], inputs: tuple = ()) -> dict:
    return {"id": f"id-{ops[0]}", "name": name, "operators": [f"id-{o}" for o in ops],
            "inputs": [{"from": f"id-{src}", "pattern": pattern} for src, pattern in inputs]}


def _saved(uid: str, finished: bool = False, partly: bool = False) -> dict:
    return {**_state(uid, finished=finished), "partly_finished": partly}


def test_flinks_finished_state_rules_are_checked_before_submitting():
    """A new operator chained to a finished source (what an older build's savepoint of a bounded
    replay met when the warm-up labels source came: Flink's 'mixed operator finished state')."""
    from runners.savepoints import finished_state_errors

    chain = _vertex("Source: labels -> Calc", ["labels", "calc_new"])
    assert finished_state_errors([chain], [_saved("labels", finished=True)]) == [
        "vertex 'Source: labels -> Calc' mixes all running and fully finished operators"]
    assert finished_state_errors([chain], [_saved("labels", finished=True), _saved("calc_new", finished=True)]) == []
    assert finished_state_errors([chain], []) == []  # all new: all running
    src = _vertex("src", ["src"])
    # a fully finished vertex after a running one
    sink = _vertex("sink", ["sink"], [("src", "POINTWISE")])
    assert "fully finished but its input is all running" in finished_state_errors(
        [src, sink], [_saved("sink", finished=True)])[0]
    # partly finished: over all-to-all its input must be fully finished, over pointwise not all running
    for pattern, input_state, refused in (("ALL_TO_ALL", {"partly": True}, True), ("ALL_TO_ALL", {"finished": True}, False),
                                          ("POINTWISE", {"partly": True}, False), ("POINTWISE", {}, True)):
        keyed = _vertex("keyed", ["keyed"], [("src", pattern)])
        errors = finished_state_errors([src, keyed], [_saved("src", **input_state), _saved("keyed", partly=True)])
        assert bool(errors) == refused, (pattern, input_state, errors)
    # compare carries them
    assert compare([_op("labels"), _op("calc_new")], [_saved("labels", finished=True)], [chain]).refused


def test_flinks_parallelism_rules_are_checked_before_submitting():
    """A savepoint's operators carry their key groups (the max parallelism they were taken
    with): a build may not run one at a higher parallelism, nor (with its max parallelism set,
    as this job's always is) change that number."""
    from runners.savepoints import parallelism_errors

    def vertex(parallelism: int, max_parallelism: int) -> dict:
        return {**_vertex("dedup_join", ["dedup_join"]), "parallelism": parallelism, "max_parallelism": max_parallelism}

    saved = [{**_saved("dedup_join"), "parallelism": 2, "max_parallelism": 128}]
    assert parallelism_errors([vertex(1, 128)], saved) == []  # rescaled down: fine
    assert parallelism_errors([vertex(128, 128)], saved) == []  # up to its key groups: fine
    above = parallelism_errors([vertex(130, 256)], saved)
    assert above == ["parallelism 130 is above the savepoint's max parallelism 128, the key groups its state has "
                     "(vertex 'dedup_join')"]
    changed = parallelism_errors([vertex(2, 256)], saved)
    assert changed == ["max parallelism 256 where the savepoint's is 128 (vertex 'dedup_join'): key groups cannot "
                       "change (set max_parallelism to 128, what the job started with)"]
    # one line per kind of mismatch, naming how many vertices have it
    two = [vertex(2, 256), {**vertex(2, 256), "name": "sink", "operators": ["id-sink"]}]
    both = parallelism_errors(two, [*saved, {**_saved("sink"), "parallelism": 2, "max_parallelism": 128}])
    assert len(both) == 1 and "(2 vertices, e.g. 'dedup_join')" in both[0]
    assert parallelism_errors([vertex(2, -1)], saved) == []  # not set: Flink adopts the savepoint's
    assert parallelism_errors([vertex(2, 256)], [_saved("dedup_join")]) == []  # no figures: not checked
    assert parallelism_errors([vertex(2, 256)], []) == []  # a new operator: nothing to restore
    assert compare([_op("dedup_join")], saved, [vertex(2, 256)]).refused == changed
