from agents.order import Ahead, overtaking


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


def test_ahead_pulls_a_partitions_ticks_in_read_order_and_they_are_skipped_in_their_place():
    items = [(0, "a", "LOW"), (0, None, None), (1, "b", "LOW"), (1, None, None), (0, None, None), None]
    first, rest = overtaking(items)
    ahead = Ahead(items, rest)
    assert ahead.pending() == {0, 1}
    order = []
    for i in rest:
        if ahead.skip(i):
            continue
        order.append(i)
        if i == 0:
            order += ahead.pull(0)  # partition 0's ticks, wanted after the first record
    assert order == [0, 1, 4, 2, 3, 5]
    assert ahead.pending() == set()


def test_a_tick_reached_in_its_place_is_no_longer_pulled():
    items = [(0, None, None), (0, "a", "LOW"), (0, None, None)]
    first, rest = overtaking(items)
    ahead = Ahead(items, rest)
    assert not ahead.skip(0)
    assert ahead.pull(0) == [2]  # only the tick not decided yet
    assert not ahead.skip(1) and ahead.skip(2)
    assert ahead.pull(0) == [] and ahead.pending() == set()
