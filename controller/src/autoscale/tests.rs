//! Decisions as an operator would see them, and the invariants over them.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_736_935_200 + s).expect("valid") // 2025-01-15T10:00:00Z
}

fn spec(min: i32, max: i32) -> Spec {
    Spec {
        min_replicas: min,
        max_replicas: max,
        window: Duration::from_secs(30),
        targets: vec![Target::RequestsPerSecond(100.0)],
        schedules: vec![],
        idle_after: None,
        behavior: Behavior::default(),
    }
}

fn load(current: i32, rps: f64) -> Observation {
    Observation {
        current_replicas: current,
        ready_replicas: current,
        requests_per_second: Some(rps),
        in_flight: Some(0.0),
        latency_p99: None,
        pending: 0,
    }
}

#[test]
fn a_ten_fold_step_scales_up_at_once_within_the_rate() {
    let s = spec(1, 20);
    let mut h = History::default();
    let d = decide(&s, t(0), &load(2, 2000.0), &mut h);
    // Wants 20; the default allows max(2 + 100 %, 2 + 4) = 6.
    assert_eq!((d.current, d.desired), (2, 6));
    assert_eq!(d.limited, Some(Limit::ScaleUpLimit));
    assert_eq!(d.direction(), Some("up"));
    assert_eq!(
        d.message(),
        "from 2 to 6 because RequestsPerSecond is 1000.0 per replica against a target of 100 \
         (ScaleUpLimit: the desired replica count is increasing faster than the maximum scale rate)"
    );
}

#[test]
fn load_removed_scales_down_only_after_the_window() {
    let s = spec(1, 20);
    let mut h = History::default();
    assert_eq!(decide(&s, t(0), &load(8, 800.0), &mut h).desired, 8);
    for at in (15..300).step_by(15) {
        let d = decide(&s, t(at), &load(8, 100.0), &mut h);
        assert_eq!(d.desired, 8, "at {at}s");
        assert_eq!(d.stabilized, Some(Stabilized::ScaleDownStabilized));
    }
    let d = decide(&s, t(315), &load(8, 100.0), &mut h);
    assert_eq!(d.desired, 1);
}

#[test]
fn schedule_floor_raises_the_count_and_holds_it() {
    let mut s = spec(1, 20);
    s.schedules = vec![
        Window::new(
            "office",
            "0 9 * * 1-5",
            "Europe/Madrid",
            Duration::from_secs(9 * 3600),
            5,
        )
        .expect("valid"),
    ];
    let mut h = History::default();
    // 2025-01-15T10:00Z is 11:00 in Madrid, a Wednesday: the window is open.
    let d = decide(&s, t(0), &load(2, 10.0), &mut h);
    assert_eq!(d.desired, 5);
    assert_eq!(
        d.reason,
        Reason::Schedule {
            name: "office".into(),
            floor: 5
        }
    );
    // At the floor, no load keeps it there.
    let d = decide(&s, t(600), &load(5, 0.0), &mut h);
    assert_eq!(d.desired, 5);
    // After 18:00 Madrid (17:00Z), the floor is gone; the down window still
    // holds 5 for five minutes, then the load decides.
    let d = decide(&s, t(7 * 3600 + 301), &load(5, 0.0), &mut h);
    assert_eq!(d.desired, 1);
}

#[test]
fn idle_goes_to_zero_and_demand_comes_back_at_once() {
    let mut s = spec(0, 10);
    s.idle_after = Some(SignedDuration::from_secs(60));
    let mut h = History::default();
    assert_eq!(decide(&s, t(0), &load(3, 300.0), &mut h).desired, 3);
    // Quiet: down to 1 only after the 300 s window, but zero after idleAfter
    // would come first: idleness skips the stabilization window.
    assert_eq!(decide(&s, t(30), &load(3, 0.0), &mut h).desired, 3);
    let d = decide(&s, t(60), &load(3, 0.0), &mut h);
    assert_eq!(d.desired, 0);
    assert_eq!(d.reason, Reason::Idle(SignedDuration::from_secs(60)));
    h.record_scale(&s, t(60), 3, 0);
    // At zero and quiet, it stays at zero.
    let quiet = Observation {
        current_replicas: 0,
        ..load(0, 0.0)
    };
    assert_eq!(decide(&s, t(90), &quiet, &mut h).desired, 0);
    // One held request: one replica now, whatever the windows say.
    let held = Observation {
        pending: 1,
        ..quiet
    };
    let d = decide(&s, t(91), &held, &mut h);
    assert_eq!((d.desired, d.reason), (1, Reason::Activation));
}

#[test]
fn no_reports_never_look_idle() {
    let mut s = spec(0, 10);
    s.idle_after = Some(SignedDuration::from_secs(60));
    let mut h = History::default();
    let silent = Observation {
        current_replicas: 2,
        ready_replicas: 2,
        ..Default::default()
    };
    for at in [0, 100, 1000] {
        let d = decide(&s, t(at), &silent, &mut h);
        assert_eq!((d.desired, &d.reason), (2, &Reason::NoMetrics));
    }
}

#[test]
fn out_of_bounds_and_disabled_follow_hpa() {
    let s = spec(2, 10);
    let mut h = History::default();
    let d = decide(&s, t(0), &load(14, 0.0), &mut h);
    assert_eq!((d.desired, d.reason), (10, Reason::AboveMax));
    let d = decide(&s, t(0), &load(1, 5000.0), &mut h);
    assert_eq!((d.desired, d.reason), (2, Reason::BelowMin));
    let d = decide(&s, t(0), &load(0, 5000.0), &mut h);
    assert_eq!((d.desired, d.reason), (0, Reason::ScalingDisabled));
}

#[test]
fn steady_load_at_target_does_not_flap() {
    let s = spec(1, 20);
    let mut h = History::default();
    let mut current = 5;
    // ±9 % noise around the target stays inside the tolerance band.
    for (i, noise) in [1.0, 1.09, 0.91, 1.05, 0.95, 1.0]
        .iter()
        .cycle()
        .take(200)
        .enumerate()
    {
        let d = decide(&s, t(i as i64 * 15), &load(current, 500.0 * noise), &mut h);
        assert!(!d.changed(), "step {i}: {}", d.message());
        current = d.desired;
    }
}

fn any_spec() -> impl Strategy<Value = Spec> {
    (
        0..4i32,
        1..30i32,
        1.0..200.0f64,
        proptest::option::of(30..600i64),
    )
        .prop_map(|(min, span, per, idle)| Spec {
            min_replicas: min,
            max_replicas: min.max(1) + span,
            targets: vec![Target::RequestsPerSecond(per)],
            idle_after: idle.map(SignedDuration::from_secs),
            ..spec(0, 1)
        })
}

/// Runs the loop the wiring will run: decide every `step` seconds, scale
/// when asked, record the scale.
fn run(s: &Spec, start: i32, rps: &[f64], step: i64) -> Vec<Decision> {
    let mut h = History::default();
    let mut current = start;
    let mut out = Vec::new();
    for (i, &r) in rps.iter().enumerate() {
        let now = t(i as i64 * step);
        let d = decide(s, now, &load(current, r), &mut h);
        if d.changed() {
            h.record_scale(s, now, current, d.desired);
        }
        current = d.desired;
        out.push(d);
    }
    out
}

proptest! {
    /// Every decision is within [minReplicas, maxReplicas]; the only
    /// exception is HPA's: a target at zero with minReplicas above zero.
    #[test]
    fn decisions_stay_within_bounds(
        s in any_spec(),
        start in 0..40i32,
        rps in proptest::collection::vec(prop_oneof![Just(0.0), 0.0..10_000.0f64], 1..40),
        step in 1..120i64,
    ) {
        for d in run(&s, start, &rps, step) {
            if d.current == 0 && s.min_replicas > 0 {
                prop_assert_eq!(d.desired, 0);
            } else {
                prop_assert!(d.desired >= s.min_replicas && d.desired <= s.max_replicas,
                    "{} not in [{}, {}]: {}", d.desired, s.min_replicas, s.max_replicas, d.message());
            }
        }
    }

    /// A constant load converges: after the stabilization window and a few
    /// rate periods the count stops moving, at a size that carries the load
    /// within tolerance or at a bound.
    #[test]
    fn constant_load_converges(s in any_spec(), start in 1..40i32, rps in 0.0..5_000.0f64) {
        let s = Spec { idle_after: None, ..s };
        let decisions = run(&s, start, &vec![rps; 120], 15);
        let tail = &decisions[100..];
        let last = tail[tail.len() - 1].desired;
        for d in tail {
            prop_assert!(!d.changed(), "still moving: {}", d.message());
        }
        let per = match s.targets[0] { Target::RequestsPerSecond(p) => p, _ => unreachable!() };
        let ratio = rps / (per * f64::from(last));
        let lower = s.min_replicas.max(1);
        prop_assert!(
            (1.0 - ratio).abs() <= metrics::TOLERANCE
                || last == lower && ratio < 1.0
                || last == s.max_replicas && ratio > 1.0
                || last == (rps / per).ceil() as i32,
            "settled at {} for ratio {}", last, ratio
        );
    }
}
