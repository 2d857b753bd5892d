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
