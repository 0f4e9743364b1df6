"""gradience.heap: collections inside a job skip older objects, and nothing is kept for good."""

from __future__ import annotations

import gc
import weakref

from gradience.heap import collect, collections_skip_older_objects


class Node:
    """A reference cycle: refcounting alone never frees it."""

    def __init__(self) -> None:
        self.me = self


def test_a_cycle_made_inside_is_collected_and_an_older_one_waits_for_the_exit() -> None:
    older = Node()
    older_ref = weakref.ref(older)
    with collections_skip_older_objects():
        assert gc.get_freeze_count() > 0
        del older  # now garbage, but frozen: a collection inside does not look at it
        young = Node()
        young_ref = weakref.ref(young)
        del young
        collect()
        assert young_ref() is None  # the job's own cycle: collected
        assert older_ref() is not None
    assert gc.get_freeze_count() == 0  # everything handed back
    gc.collect()
    assert older_ref() is None  # and collected at the next collection


def test_a_jobs_model_is_never_frozen_only_what_outlives_the_first_job() -> None:
    with collections_skip_older_objects():  # the run
        frozen = gc.get_freeze_count()
        with collections_skip_older_objects():  # its first job
            model = Node()  # alive while the job collects (release_memory before evaluation)
            model_ref = weakref.ref(model)
            imported = [Node() for _ in range(1000)]  # what the first job's imports leave
            collect()
            assert gc.get_freeze_count() == frozen  # a collection inside a job freezes nothing
            del model  # the job drops its model: a cycle
        assert model_ref() is None  # collected when the job ended, not frozen
        assert gc.get_freeze_count() >= frozen + 1000  # what outlived the job: frozen
        kept = weakref.ref(imported[0])
        del imported
        with collections_skip_older_objects():  # a later job: no second freeze
            after = gc.get_freeze_count()
        assert gc.get_freeze_count() == after
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert kept() is None


def test_everything_collects_a_frozen_object_dropped_inside_and_keeps_the_rest_frozen() -> None:
    reused = Node()  # a base model kept across jobs
    reused_ref = weakref.ref(reused)
    with collections_skip_older_objects():
        frozen = gc.get_freeze_count()
        del reused  # discarded mid-run (a failed job)
        collect()
        assert reused_ref() is not None  # a plain collection does not look at it
        collect(everything=True)
        assert reused_ref() is None
        assert gc.get_freeze_count() > 0.9 * frozen  # the live older objects: frozen again
    assert gc.get_freeze_count() == 0
    collect(everything=True)  # outside any scope: a plain collection, freezes nothing
    assert gc.get_freeze_count() == 0
