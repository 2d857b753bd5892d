from agents.lane import Lane
from agents.order import overtaking


def lane_at(partition: int, taken: int, records: list[tuple[int, str | None, bool]]) -> Lane:
    """A lane whose pipeline has taken ``partition`` up to ``taken``, then saw ``records`` (offset, user,
    CRITICAL); each CRITICAL record's payload is its offset."""
    lane = Lane()
    for offset, user, critical in records:
        lane.seen(partition, offset, user, offset if critical else None)
    lane.taken(partition, taken)
    return lane


def offsets(ready):
    return [offset for _, offset, _, _, _, _ in ready]


def test_a_critical_event_goes_ahead_when_nothing_unread_before_it_is_its_users():
    lane = lane_at(0, 9, [(10, "a", False), (11, "b", False), (12, "c", True)])
    assert lane.ready({}) == [(0, 12, "c", 12, None, [])]
    assert lane.ready({}) == []  # it stops waiting


def test_an_unread_record_of_its_user_holds_it_back_until_the_pipeline_takes_that_record():
    lane = lane_at(0, 9, [(10, "a", False), (11, "b", False), (12, "a", True)])
    assert lane.ready({}) == []
    lane.taken(0, 10)
    assert offsets(lane.ready({})) == [12]


def test_a_record_that_could_not_be_read_holds_back_the_events_behind_it_on_its_partition():
    lane = lane_at(0, 9, [(10, None, False), (11, "b", True)])
    lane.seen(1, 5, "c", 5)
    lane.taken(1, 4)
    assert offsets(lane.ready({})) == [5]  # another partition goes on
    lane.taken(0, 10)
    assert offsets(lane.ready({})) == [11]


def test_nothing_goes_before_the_pipeline_reaches_the_first_record_seen():
    lane = Lane()
    lane.seen(0, 20, "a", "x")  # offsets 11..19 were never seen: any of them could be a's
    lane.taken(0, 10)
    assert lane.ready({}) == []
    lane.taken(0, 19)
    assert offsets(lane.ready({})) == [20]


def test_its_partitions_ticks_still_to_decide_in_the_batch_hold_it_back_without_due_times():
    lane = lane_at(0, 9, [(10, "a", True)])
    assert lane.ready({0: 1_000}) == []
    assert offsets(lane.ready({1: 1_000})) == [10]


def test_a_tick_still_to_decide_holds_back_only_a_user_it_may_release():
    due = {"a": 1_000, "b": 1_001}.get
    lane = lane_at(0, 9, [(10, "a", True), (11, "b", True), (12, "c", True)])
    ready = lane.ready({0: 1_000}, lambda user, partition: due(user))
    # a is due at the tick's time: the tick may release it, so a waits; b is due after it, c not at all
    assert [(offset, until) for _, offset, _, _, until, _ in ready] == [(11, 1_000), (12, 1_000)]
    assert offsets(lane.ready({}, lambda user, partition: due(user))) == [10]  # the tick was decided


def test_ready_names_the_partitions_whose_ticks_held_an_event_back():
    lane = lane_at(0, 9, [(10, "a", True)])
    lane.seen(1, 20, "b", 20)
    lane.taken(1, 19)
    due = {"a": 1_000, "b": 5_000}.get
    assert lane.ready({0: 1_000, 1: 1_000}, lambda user, partition: due(user)) == [(1, 20, "b", 20, 1_000, [])]
    assert lane.tick_held == {0}  # b is due after partition 1's tick: that tick held nothing back
    assert lane.ready({0: 1_000}) == [] and lane.tick_held == {0}  # without due times the tick holds a back too
    assert offsets(lane.ready({})) == [10] and lane.tick_held == set()
    assert lane.ready({0: 1_000}) == [] and lane.tick_held == set()  # nothing waits


def test_its_users_records_in_the_batch_in_flight_hold_it_back_until_the_batch_is_decided():
    lane = Lane()
    lane.seen(0, 5, "x")
    lane.taken(0, 5)
    for offset, user in ((6, "a"), (7, "b"), (8, "a")):  # 6 and 7 are the batch in flight, 8 arrived since
        lane.seen(0, offset, user, offset if offset == 8 else None)
    assert lane.ready({}) == []
    lane.taken(0, 7)
    assert offsets(lane.ready({})) == [8]


def test_a_users_second_critical_event_goes_once_the_first_was_decided():
    lane = lane_at(0, 9, [(10, "a", True), (11, "a", True)])
    assert offsets(lane.ready({})) == [10]
    assert lane.ready({}) == []
    lane.decided(0, 10, "a")
    assert offsets(lane.ready({})) == [11]


def test_the_pipeline_taking_events_decided_ahead_leaves_their_users_later_events_free():
    lane = lane_at(0, 9, [(10, "a", True), (11, "b", False), (12, "a", False), (13, "a", True)])
    assert offsets(lane.ready({})) == [10]
    lane.decided(0, 10, "a")
    lane.taken(0, 12)  # the decided one is not counted against its user a second time
    assert offsets(lane.ready({})) == [13]
    lane.decided(0, 13, "a")
    lane.taken(0, 13)
    lane.seen(0, 14, "a", 14)
    assert offsets(lane.ready({})) == [14]


def test_one_not_decided_after_all_keeps_holding_its_users_later_events():
    lane = lane_at(0, 9, [(10, "a", True), (11, "a", True)])
    assert offsets(lane.ready({})) == [10]  # then it failed to validate: no ``decided``
    assert lane.ready({}) == []
    lane.taken(0, 10)  # the pipeline read it the usual way
    assert offsets(lane.ready({})) == [11]


def test_records_the_pipeline_has_taken_are_not_waited_for_nor_seen_again():
    lane = lane_at(0, 12, [(10, "a", True), (11, "b", False), (12, "c", True)])
    assert lane.ready({}) == []
    lane.seen(0, 12, "c", 12)  # read again after the pipeline took it
    assert lane.ready({}) == []
    lane.seen(0, 13, "a", 13)
    assert offsets(lane.ready({})) == [13]


def test_a_partition_too_far_behind_starts_over():
    lane = Lane(limit=3)
    for offset in range(10, 14):
        lane.seen(0, offset, f"u{offset}", offset)
    lane.taken(0, 9)
    assert lane.ready({}) == []  # 10..12 forgotten: nothing after them is known to be clear
    lane.taken(0, 12)
    assert offsets(lane.ready({})) == [13]


def test_records_not_seen_make_the_partition_start_over():
    lane = lane_at(0, 9, [(10, "a", False)])
    lane.seen(0, 14, "b", 14, after_gap=True)  # 11..13 were dropped: any of them could be b's
    assert lane.ready({}) == []
    lane.taken(0, 13)
    assert offsets(lane.ready({})) == [14]


def test_reset_forgets_everything():
    lane = lane_at(0, 9, [(10, "a", True)])
    lane.reset()
    assert lane.ready({}) == [] and not lane.waiting


def test_overtaking_splits_the_critical_events_that_overtake_from_the_rest_each_in_read_order():
    items = [(0, "a", "LOW"), (1, "b", "CRITICAL"), None, (0, "a", "CRITICAL"), (0, "c", "CRITICAL")]
    assert overtaking(items) == ([1, 4], [0, 2, 3])
    assert overtaking([(0, "a", "LOW")]) == ([], [0])


def test_a_user_whose_state_is_being_written_waits_for_the_commit():
    lane = lane_at(0, 9, [(10, "a", True), (11, "b", True)])
    assert offsets(lane.ready({}, busy={"a"})) == [11]
    assert offsets(lane.ready({})) == [10]


def kept_lane(partition: int, taken: int, records: list[tuple[int, str | None, bool]]) -> Lane:
    """As ``lane_at``, but every other record of a known user is kept: its record is ``("r", offset)``."""
    lane = Lane()
    for offset, user, critical in records:
        if critical:
            lane.seen(partition, offset, user, offset)
        else:
            lane.seen(partition, offset, user, record=None if user is None else ("r", offset))
    lane.taken(partition, taken)
    return lane


def test_its_users_kept_records_go_ahead_with_it_first_and_in_order():
    lane = kept_lane(0, 9, [(10, "a", False), (11, "b", False), (12, "a", False), (13, "a", True)])
    assert lane.ready({}) == [(0, 13, "a", 13, None, [(10, ("r", 10)), (12, ("r", 12))])]
    for offset in (10, 12, 13):
        lane.decided(0, offset, "a")
    lane.seen(0, 14, "a", 14)  # nothing of a's is undecided before it now
    assert lane.ready({}) == [(0, 14, "a", 14, None, [])]
    lane.taken(0, 13)  # the pipeline reaches them: a's decided records are no longer pending anyway
    lane.decided(0, 14, "a")
    lane.taken(0, 14)
    assert lane.ready({}) == [] and not lane.waiting


def test_a_record_of_its_user_that_was_not_kept_still_holds_it_back():
    lane = Lane()
    lane.seen(0, 10, "a", record=("r", 10))
    lane.seen(0, 11, "a")  # not kept (the reader had nothing to decide it with)
    lane.seen(0, 12, "a", 12)
    lane.taken(0, 9)
    assert lane.ready({}) == []
    lane.taken(0, 11)
    assert lane.ready({}) == [(0, 12, "a", 12, None, [])]


def test_an_earlier_critical_event_of_its_user_goes_first_on_its_own():
    lane = kept_lane(0, 9, [(10, "a", False), (11, "a", True), (12, "a", True)])
    assert lane.ready({}) == [(0, 11, "a", 11, None, [(10, ("r", 10))])]  # 12 waits for 11 to be decided
    lane.decided(0, 10, "a")
    lane.decided(0, 11, "a")
    assert lane.ready({}) == [(0, 12, "a", 12, None, [])]


def test_a_run_not_decided_leaves_the_event_to_the_pipeline_and_holds_its_users_later_ones():
    lane = kept_lane(0, 9, [(10, "a", False), (11, "a", True)])
    assert offsets(lane.ready({})) == [11]  # the caller could not decide 10: neither 10 nor 11 is ``decided``
    lane.seen(0, 12, "a", 12)
    assert lane.ready({}) == []  # 11 was handed out and not decided: it holds a's later ones, as one not kept
    lane.taken(0, 11)
    assert lane.ready({}) == [(0, 12, "a", 12, None, [])]


def test_kept_records_are_forgotten_when_the_partition_starts_over():
    lane = kept_lane(0, 9, [(10, "a", False)])
    lane.seen(0, 20, "a", 20, after_gap=True)  # 11..19 were dropped: it starts over at 20
    lane.taken(0, 19)
    assert lane.ready({}) == [(0, 20, "a", 20, None, [])]


def test_past_its_keep_limit_a_partitions_records_are_remembered_without_being_kept():
    lane = Lane(keep=2)
    lane.seen(0, 10, "b", record=("r", 10))
    lane.seen(0, 11, "b", record=("r", 11))
    lane.seen(0, 12, "a", record=("r", 12))  # the third unread record: not kept
    lane.seen(0, 13, "a", 13)
    lane.taken(0, 9)
    assert lane.ready({}) == []  # a's record at 12 holds it back, as one the reader could not keep
    lane.taken(0, 12)
    assert offsets(lane.ready({})) == [13]
