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


def test_the_first_collect_inside_freezes_what_survives_it_and_nesting_is_one_scope() -> None:
    with collections_skip_older_objects():
        frozen = gc.get_freeze_count()
        imported_meanwhile = [Node() for _ in range(1000)]  # what a first job's imports leave
        collect()
        assert gc.get_freeze_count() >= frozen + 1000
        with collections_skip_older_objects():
            collect()
            after = gc.get_freeze_count()
        assert gc.get_freeze_count() == after  # the inner exit unfroze nothing
        kept = weakref.ref(imported_meanwhile[0])
        del imported_meanwhile
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert kept() is None
    collect()  # outside any scope: a plain collection, freezes nothing
    assert gc.get_freeze_count() == 0
