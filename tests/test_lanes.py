"""Who gets the next delivery slot: AIMD windows, fairness across partners, bounds on bad lanes."""

from __future__ import annotations

from callbacks.lanes import Lanes, Signal, Window


def fill(lanes, owner, dest, count, *, line_limit=1000):
    lane = lanes.lane(owner, dest)
    for number in range(count):
        assert lanes.add(lane, f"{owner}-{dest}-{number}", line_limit=line_limit)
    return lane


def take_all(lanes):
    taken = []
    while (item := lanes.take()) is not None:
        taken.append(item)
    return taken


def test_a_window_grows_fast_then_slowly_and_halves_on_throttling():
    """Slow start doubles per window, a throttle halves it, and growth is then one per window."""
    window = Window(maximum=48, limit=2)
    for _ in range(6):
        window.grow()
    assert window.slots == 8
    window.shrink()
    assert window.slots == 4
    for _ in range(4):
        window.grow()
    assert window.slots == 4, "below one window's worth of successes: no new slot yet"
    window.grow()
    assert window.slots == 5
    for _ in range(100):
        window.shrink()
    assert window.limit == 1.0
    for _ in range(10_000):
        window.grow()
    assert window.slots == 48


def test_a_lane_starts_with_a_small_window_and_grows_on_fast_successes():
    """A new destination gets two attempts at once; fast successes open it up to the limit."""
    lanes = Lanes(capacity=100, per_destination=10)
    lane = fill(lanes, "ptn_a", "http://a:80", 50)
    assert len(take_all(lanes)) == 2
    for _ in range(2):
        lanes.done(lane, Signal.FAST)
    assert len(take_all(lanes)) == 4
    for _ in range(4):
        lanes.done(lane, Signal.FAST)
    for _ in range(40):
        for taken_lane, _ in take_all(lanes):
            lanes.done(taken_lane, Signal.FAST)
    assert lane.window.slots == 10


def test_timeouts_shrink_a_lane_to_one_attempt_at_a_time():
    """Silence (timeouts, refused connections) halves the window each time, down to one."""
    lanes = Lanes(capacity=100, per_destination=48)
    lane = fill(lanes, "ptn_a", "http://hang:80", 20)
    lane.window.limit = 16
    for taken_lane, _ in take_all(lanes):
        lanes.done(taken_lane, Signal.SILENT)
    assert lane.window.slots == 1 and lane.suspect
    assert len(take_all(lanes)) == 1


def test_slots_go_round_robin_across_partners_whatever_their_backlogs():
    """A partner with one delivery is served at the next free slot despite another's backlog."""
    lanes = Lanes(capacity=4, per_destination=48, owner_share=1.0)
    big = fill(lanes, "ptn_big", "http://big:80", 1000)
    big.window.limit = 48
    first = take_all(lanes)
    assert len(first) == 4
    fill(lanes, "ptn_small", "http://small:80", 1)
    lanes.done(first[0][0], Signal.FAST)
    (lane, item), *_ = take_all(lanes)
    assert lane.owner == "ptn_small" and item == "ptn_small-http://small:80-0"


def test_one_partner_never_holds_more_than_its_share_of_the_capacity():
    """With the default share, a flood from one partner leaves a quarter of the slots free."""
    lanes = Lanes(capacity=8, per_destination=48)
    for number in range(20):
        fill(lanes, "ptn_flood", f"http://d{number}:80", 5)
    assert len(take_all(lanes)) == 6
    fill(lanes, "ptn_other", "http://o:80", 5)
    assert [lane.owner for lane, _ in take_all(lanes)] == ["ptn_other", "ptn_other"]


def test_lanes_that_do_not_answer_hold_a_bounded_part_of_the_capacity():
    """Once their attempts time out, silent destinations together get at most a quarter."""
    lanes = Lanes(capacity=8, per_destination=48, owner_share=1.0)
    hanging = [fill(lanes, "ptn_a", f"http://hang{n}:80", 10) for n in range(8)]
    first = take_all(lanes)
    assert len(first) == 8
    for lane, _ in first:
        lanes.done(lane, Signal.SILENT)
    assert all(lane.suspect for lane in hanging)
    assert len(take_all(lanes)) == 2  # a quarter of 8
    healthy = fill(lanes, "ptn_a", "http://ok:80", 10)
    assert {lane.dest for lane, _ in take_all(lanes)} == {healthy.dest}


def test_the_lanes_of_one_destination_share_its_limit():
    """Several partners sending to one host never exceed its per-destination limit together."""
    lanes = Lanes(capacity=100, per_destination=3, owner_share=1.0)
    for owner in ("ptn_a", "ptn_b", "ptn_c"):
        fill(lanes, owner, "http://shared:80", 10).window.limit = 3
    taken = take_all(lanes)
    assert len(taken) == 3
    assert {lane.owner for lane, _ in taken} == {"ptn_a", "ptn_b", "ptn_c"}
    lanes.done(taken[0][0], Signal.FAST)
    assert len(take_all(lanes)) == 1


def test_a_full_line_refuses_more_and_idle_lanes_are_forgotten():
    """A lane's line is bounded; lanes with nothing to do are dropped (no state kept)."""
    lanes = Lanes(capacity=10, per_destination=10)
    lane = lanes.lane("ptn_a", "http://a:80")
    assert lanes.add(lane, "one", line_limit=1)
    assert not lanes.add(lane, "two", line_limit=1)
    ((taken_lane, _),) = take_all(lanes)
    lanes.done(taken_lane, Signal.FAST)
    assert lanes.held == 0
    assert lanes.forget_idle() == 1
    assert list(lanes.lanes()) == []


def test_attempts_begun_before_a_lane_fell_silent_do_not_free_silent_slots():
    """A lane that falls silent with attempts still in flight keeps the silent count exact."""
    lanes = Lanes(capacity=8, per_destination=48, owner_share=1.0)
    noisy = [fill(lanes, "ptn_a", f"http://hang{n}:80", 10) for n in range(4)]
    first = take_all(lanes)
    assert len(first) == 8
    for lane, _ in first:
        lanes.done(lane, Signal.SILENT)
    assert lanes.suspect_in_flight == 0
    assert len(take_all(lanes)) == 2
    assert lanes.suspect_in_flight == 2 and all(lane.suspect for lane in noisy)
