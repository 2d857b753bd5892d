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
