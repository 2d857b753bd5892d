from streams.due import DueIndex


def test_users_come_out_once_earliest_first_and_a_reindexed_user_at_its_new_time():
    index = DueIndex()
    index.set("a", 3000)
    index.set("b", 1000)
    index.set("c", 2000)
    index.set("a", 5000)  # moved later: its 3000 entry is stale
    index.set("c", None)  # nothing due any more
    assert index.next() == 1000 and len(index) == 2
    assert index.pop_due(4000) == ["b"]
    assert index.pop_due(4000) == []
    index.set("b", 4500)
    assert index.pop_due(6000) == ["b", "a"]
    assert index.next() is None and len(index) == 0


def test_setting_the_same_time_twice_yields_the_user_once():
    index = DueIndex()
    index.set("a", 1000)
    index.set("a", 1000)
    assert index.pop_due(1000) == ["a"]


def test_pop_due_takes_at_most_the_limit_and_leaves_the_rest_due():
    index = DueIndex()
    for n in range(7):
        index.set(f"u{n}", 1_000 + n)
    first = index.pop_due(2_000, limit=3)
    assert first == ["u0", "u1", "u2"]
    assert index.next() == 1_003
    assert index.pop_due(2_000, limit=3) == ["u3", "u4", "u5"]
    assert index.pop_due(2_000, limit=3) == ["u6"]
    assert index.pop_due(2_000, limit=3) == [] and index.next() is None


def test_a_user_moved_back_and_forth_comes_out_once_at_its_last_time():
    index = DueIndex()
    index.set("a", 1000)
    index.set("a", 2000)
    index.set("a", 1000)  # a second entry in the 1000 bucket, beside the stale first one
    index.set("b", 1000)
    assert len(index) == 2 and index.next() == 1000
    assert index.pop_due(1500) == ["a", "b"]
    assert index.pop_due(5000) == [] and index.next() is None and len(index) == 0


def test_a_bucket_taken_in_chunks_keeps_its_order_and_skips_the_users_that_moved():
    index = DueIndex()
    for n in range(10):
        index.set(f"u{n}", 1000)
    index.set("u3", 9000)
    index.set("u4", None)
    assert index.pop_due(1000, limit=4) == ["u0", "u1", "u2", "u5"]
    assert index.next() == 1000
    assert index.pop_due(1000, limit=4) == ["u6", "u7", "u8", "u9"]
    assert index.next() == 9000 and len(index) == 1
    assert index.pop_due(9000) == ["u3"]


def test_the_due_memory_bench_pops_every_user_from_both_indexes():
    from bench.due_memory import DueIndex as Measured
    from bench.due_memory import HeapPerUser, measure

    for make in (Measured, HeapPerUser):
        figures = measure(make.__name__, make, users=500, periods=3, chunk=7)
        assert figures["mb"] > 0 and figures["bytes_per_user"] > 0
