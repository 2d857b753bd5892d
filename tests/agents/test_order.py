from agents.order import overtaking


def decision_order(items):
    first, rest = overtaking(items)
    return first + rest


def test_a_critical_event_with_nothing_of_its_user_earlier_in_the_batch_goes_first():
    items = [(0, "a", "LOW"), None, (1, "b", "NORMAL"), (0, "c", "CRITICAL"), (1, "d", "HIGH"), (1, "e", "CRITICAL")]
    assert decision_order(items) == [3, 5, 0, 1, 2, 4]


def test_a_user_s_own_records_never_pass_each_other():
    items = [(0, "a", "LOW"), (0, "a", "CRITICAL"), (1, "b", "CRITICAL"), (1, "b", "CRITICAL"), (1, "b", "LOW")]
    # a's CRITICAL waits for a's earlier LOW; b's second CRITICAL stays behind b's first, in its place
    assert decision_order(items) == [2, 0, 1, 3, 4]


def test_a_tick_of_its_partition_earlier_in_the_batch_keeps_a_critical_event_in_place():
    items = [(0, "a", "LOW"), (1, None, None), (1, "b", "CRITICAL"), (0, "c", "CRITICAL")]
    # the tick may release b: b's CRITICAL stays after it; c's partition had no tick
    assert decision_order(items) == [3, 0, 1, 2]


def test_without_a_critical_event_the_read_order_stays():
    items = [(0, "a", "HIGH"), (0, None, None), (1, "b", "LOW"), None]
    assert decision_order(items) == [0, 1, 2, 3]
