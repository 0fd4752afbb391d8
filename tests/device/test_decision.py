"""The access rule (`access_verdict`) and the decision rules with a fake clock: multi-frame,
window, hold-open, cooldown, lockout."""

import math

import pytest

from blindgate.device.decision import DecisionEngine, DoorEvent, VerdictKind, access_verdict
from blindgate.shared.config import DecisionConfig

EVENT_RECOGNIZED, EVENT_UNKNOWN, EVENT_DENIED = DoorEvent.RECOGNIZED, DoorEvent.UNKNOWN, DoorEvent.DENIED
MATCH, UNKNOWN, DOUBT = VerdictKind.MATCH, VerdictKind.UNKNOWN, VerdictKind.DOUBT


# -- the access rule ----------------------------------------------------------------------------


def test_the_rule_lives_in_config_with_documented_defaults():
    config = DecisionConfig()
    # no fixed distance: the threshold comes from the target (device/operating_point.py)
    assert (config.threshold, config.max_false_open, config.doubt_margin, config.mode) == (None, 0.001, 0.05, "identify")


@pytest.mark.parametrize(
    "distance, kind",
    [
        (0.0, MATCH),
        (0.35, MATCH),
        (0.6, MATCH),  # the threshold itself still matches
        (math.nextafter(0.6, 1.0), DOUBT),
        (0.62, DOUBT),
        (0.65, DOUBT),  # threshold + margin: still doubtful, not a failed attempt
        (0.66, UNKNOWN),
        (1.4, UNKNOWN),
    ],
)
def test_threshold_and_doubt_margin(distance, kind):
    assert access_verdict(distance, 0.6, 0.05) is kind


@pytest.mark.parametrize("distance", [math.inf, math.nan, -math.inf])
def test_no_finite_distance_means_nobody_enrolled(distance):
    assert access_verdict(distance, 0.6, 0.05) is UNKNOWN


def test_the_threshold_and_margin_move_the_boundary():
    assert access_verdict(0.55, 0.6, 0.05) is MATCH and access_verdict(0.55, 0.5, 0.05) is DOUBT
    assert access_verdict(0.6, 0.5, 0.05) is UNKNOWN
    assert access_verdict(0.62, 0.6, 0.0) is UNKNOWN
    assert access_verdict(0.62, 0.7, 0.05) is MATCH


def test_kinds_and_events_keep_their_wire_strings():
    assert [str(k) for k in VerdictKind] == ["match", "unknown", "doubt", "rejected"]
    events = ["recognized", "unknown", "denied", "cloud_integrity", "liveness_prompt", "liveness_failed"]
    assert [str(e) for e in DoorEvent] == events
    assert f"verdict_{VerdictKind.MATCH}" == "verdict_match"


# -- the decision rules -------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t

    def advance(self, s):
        self.t += s


def make(**kw):
    clock = Clock()
    cfg = DecisionConfig(
        **{
            "frames_required": 2,
            "window_s": 3.0,
            "open_seconds": 5.0,
            "cooldown_s": 3.0,
            "lockout_failures": 5,
            "lockout_s": 30.0,
            **kw,
        }
    )
    return DecisionEngine(cfg, clock=clock), clock


def test_single_frame_never_opens():
    engine, clock = make()
    d = engine.observe_match("alice")
    assert not d.unlock and d.event is None and not engine.is_open


def test_two_agreeing_frames_open_with_recognized_event():
    engine, clock = make()
    engine.observe_match("alice")
    clock.advance(0.5)
    d = engine.observe_match("alice")
    assert d.unlock and d.event == EVENT_RECOGNIZED and d.subject == "alice" and engine.is_open


def test_frames_of_different_subjects_do_not_agree():
    engine, clock = make()
    engine.observe_match("alice")
    assert not engine.observe_match("bob").unlock
    assert engine.observe_match("bob").unlock  # bob, bob


def test_agreeing_frames_outside_window_do_not_open():
    engine, clock = make()
    engine.observe_match("alice")
    clock.advance(3.5)
    assert not engine.observe_match("alice").unlock
    clock.advance(1.0)
    assert engine.observe_match("alice").unlock


@pytest.mark.parametrize("breaker", ["doubt", "unknown", "other"])
def test_anything_in_between_restarts_the_count(breaker):
    engine, clock = make(frames_required=3)
    engine.observe_match("alice")
    engine.observe_match("alice")
    {
        "doubt": lambda: engine.observe_doubt("timeout"),
        "unknown": engine.observe_unknown,
        "other": lambda: engine.observe_match("bob"),
    }[breaker]()
    assert not engine.observe_match("alice").unlock
    assert not engine.observe_match("alice").unlock
    assert engine.observe_match("alice").unlock


def test_doubt_alone_never_opens_nor_counts_as_failure():
    engine, clock = make()
    for _ in range(50):
        d = engine.observe_doubt("no reply")
        assert not d.unlock and d.event is None
        clock.advance(0.1)
    assert engine.failures == 0 and not engine.locked_out()


def test_hold_open_then_lock_then_cooldown():
    engine, clock = make()
    engine.observe_match("alice")
    assert engine.observe_match("alice").unlock
    clock.advance(4.9)
    assert not engine.tick() and engine.is_open
    assert not engine.observe_match("alice").unlock  # no extension / re-open while open
    clock.advance(0.2)
    assert engine.tick() and not engine.is_open
    # cooldown: 3 s during which nothing opens
    clock.advance(0.5)
    engine.observe_match("alice")
    assert not engine.observe_match("alice").unlock
    clock.advance(3.0)
    engine.observe_match("alice")
    assert engine.observe_match("alice").unlock


def fail_once(engine, clock):
    engine.observe_unknown()
    d = engine.observe_unknown()
    clock.advance(3.1)  # past the cooldown that separates attempts
    return d


def test_unknown_run_is_one_failed_attempt_per_cooldown():
    engine, clock = make()
    assert engine.observe_unknown().event is None  # one frame is not yet confident
    assert engine.observe_unknown().event == EVENT_UNKNOWN
    for _ in range(20):  # the same stranger lingering: no more attempts counted
        assert engine.observe_unknown().event is None
        clock.advance(0.1)
    assert engine.failures == 1


def test_lockout_after_five_failures_lasts_at_least_30s():
    engine, clock = make()
    for _ in range(5):
        d = fail_once(engine, clock)
        assert d.event == EVENT_UNKNOWN
    assert engine.locked_out()
    # a legitimate face during lockout: denied, not opened
    engine.observe_match("alice")
    d = engine.observe_match("alice")
    assert not d.unlock and d.event == EVENT_DENIED
    clock.advance(20)
    engine.tick()
    engine.observe_match("alice")
    assert not engine.observe_match("alice").unlock
    clock.advance(10)  # 30 s + the 3.1 s after the 5th failure have passed
    engine.tick()
    assert not engine.locked_out() and engine.failures == 0
    engine.observe_match("alice")
    assert engine.observe_match("alice").unlock


def test_lockout_configured_shorter_is_raised_to_30s():
    engine, clock = make(lockout_s=5.0, cooldown_s=0.0)
    for _ in range(5):
        engine.observe_unknown()
        engine.observe_unknown()
        clock.advance(0.01)
    assert engine.locked_out()
    clock.advance(29)
    engine.tick()
    assert engine.locked_out()


def test_four_failures_then_success_resets_the_count():
    engine, clock = make()
    for _ in range(4):
        fail_once(engine, clock)
    engine.observe_match("alice")
    assert engine.observe_match("alice").unlock
    assert engine.failures == 0
    clock.advance(5)
    assert engine.tick()
    clock.advance(3.1)  # cooldown after relocking
    fail_once(engine, clock)
    assert not engine.locked_out() and engine.failures == 1


def test_denied_events_are_rate_limited():
    engine, clock = make()
    for _ in range(5):
        fail_once(engine, clock)
    events = []
    for _ in range(10):
        events.append(engine.observe_match("alice").event)
        clock.advance(0.1)
    assert events.count(EVENT_DENIED) == 1


def test_every_failed_claim_counts_and_locks_out():
    """Each wrong badge/PIN (or a claim that expired unopened) is one failed attempt, no cooldown grace."""
    engine, clock = make(lockout_failures=3)
    for i in range(1, 3):
        d = engine.observe_failed_claim("claimed pin matches nobody")
        assert d.event == DoorEvent.UNKNOWN and engine.failures == i and not engine.locked_out()
        clock.advance(0.5)
    engine.observe_failed_claim("claimed pin matches nobody")
    assert engine.locked_out()
    engine.observe_match("alice")
    clock.advance(0.5)
    d = engine.observe_match("alice")  # the right face during the lockout: denied
    assert not d.unlock and d.event == DoorEvent.DENIED
    clock.advance(30.1)
    engine.tick()
    engine.observe_match("alice")
    clock.advance(0.5)
    assert engine.observe_match("alice").unlock  # positive control: after the lockout


def test_a_failed_claim_breaks_an_agreeing_run():
    engine, clock = make()
    engine.observe_match("alice")
    engine.observe_failed_claim()
    assert not engine.observe_match("alice").unlock


def test_a_refused_match_is_denied_once_per_cooldown_never_opens_and_is_no_failure():
    engine, clock = make()
    refused = "access disabled for this person"
    assert engine.observe_match("alice", refused).event is None  # one frame: not yet a run
    clock.advance(0.2)
    d = engine.observe_match("alice", refused)
    assert d.event == EVENT_DENIED and not d.unlock and d.subject == "alice" and refused in d.reason
    for _ in range(4):  # the person keeps standing there: no new event within the cooldown
        clock.advance(0.2)
        d = engine.observe_match("alice", refused)
        assert d.event is None and not d.unlock
    assert not engine.is_open and engine.failures == 0 and not engine.locked_out()
    clock.advance(3.0)
    engine.observe_match("alice")
    clock.advance(0.2)
    assert engine.observe_match("alice").unlock  # positive control: allowed again, opens at once


# -- liveness -----------------------------------------------------------------------------------


def challenged(clock: Clock, subject: str = "alice") -> DecisionEngine:
    engine = DecisionEngine(DecisionConfig(frames_required=2, cooldown_s=1.0), clock=clock)
    assert engine.observe_match(subject, challenge_s=4.0).unlock is False
    prompt = engine.observe_match(subject, challenge_s=4.0)
    assert prompt.event is DoorEvent.LIVENESS_PROMPT and prompt.challenge and not prompt.unlock
    assert engine.challenged == subject
    return engine


def test_a_completed_run_waits_for_liveness_and_opens_when_live():
    clock = Clock()
    engine = challenged(clock)
    clock.t = 1000.0 + 1.0
    assert engine.observe_match("alice", challenge_s=4.0).unlock is False  # frames meanwhile change nothing
    clock.t = 1000.0 + 2.5
    opened = engine.observe_liveness("alice", True, "live")
    assert opened.unlock and opened.event is EVENT_RECOGNIZED and engine.is_open


@pytest.mark.parametrize(
    "subject, live, late",
    [("alice", False, False), ("bob", True, False), ("alice", True, True)],
    ids=["not live", "another subject", "too late"],
)
def test_liveness_that_is_not_the_awaited_live_outcome_never_opens(subject, live, late):
    clock = Clock()
    engine = challenged(clock)
    clock.t = 1000.0 + 5.0 if late else 2.0
    decision = engine.observe_liveness(subject, live, "flat")
    assert not decision.unlock and not engine.is_open and engine.challenged is None
    if subject == "alice":
        assert decision.event is DoorEvent.LIVENESS_FAILED and engine.failures == 1
    assert not engine.observe_liveness("alice", True, "live").unlock  # nothing is awaited any more


def test_failed_liveness_counts_every_time_and_locks_out():
    clock = Clock()
    engine = DecisionEngine(DecisionConfig(frames_required=1, cooldown_s=1.0, lockout_failures=3), clock=clock)
    for n in range(3):
        clock.advance(0.1)
        assert engine.observe_match("alice", challenge_s=4.0).challenge
        assert f"failed attempt {n + 1}/3" in engine.observe_liveness("alice", False, "flat").reason
    assert engine.locked_out()
    clock.advance(0.1)
    assert engine.observe_match("alice", challenge_s=4.0).event is EVENT_DENIED  # no prompt during a lockout


def test_a_challenge_never_answered_is_dropped_after_its_time():
    clock = Clock()
    engine = challenged(clock)
    clock.t = 1000.0 + 4.5
    engine.observe_match("alice", challenge_s=4.0)  # the run starts again: the old check is gone
    assert engine.challenged is None
    clock.t = 1000.0 + 4.6
    assert engine.observe_match("alice", challenge_s=4.0).challenge
