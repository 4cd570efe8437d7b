//! CA rotation with an overlap, decided without I/O: which stage a cluster's CAs are in,
//! what to do now and when to look again.
//!
//! The schedule, for a CA valid `L` seconds (each CA's own life):
//! 1. **Stable** (one CA): at two thirds of `L` a new CA is made (same subject) and
//!    joins the trust bundle (the `ca.crt` of the leaf Secrets) after the current one;
//!    the current CA keeps issuing.
//! 2. **Overlap** (both trusted, leaves from the old CA): for `L / 6` after the bundle
//!    was published (clients refresh their trust meanwhile), and until every pod accepts
//!    client certificates of the new CA (it has loaded the bundle); then the new CA
//!    issues every leaf. If the old CA expires first, the leaves move at once.
//! 3. **LeavesMoved** (both trusted, leaves from the new CA): the old CA leaves the
//!    bundle when it expires or when the last leaf it signed does, whichever is first.

/// A certificate's validity, seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub not_before: i64,
    pub not_after: i64,
}

impl Window {
    fn life(&self) -> i64 {
        self.not_after.saturating_sub(self.not_before).max(0)
    }

    fn expired(&self, now: i64) -> bool {
        now >= self.not_after
    }

    /// Two thirds into its life: when its successor is made.
    pub fn rotate_at(&self) -> i64 {
        super::renewal(self.not_before, self.not_before, self.not_after).renew_at
    }

    /// How long the bundle with its successor is in place before the leaves move.
    pub fn overlap(&self) -> i64 {
        self.life() / 6
    }
}

/// The CAs of a cluster as stored, with the rotation's recorded moments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaState {
    /// The CA that issues the leaves.
    pub current: Window,
    /// A newer CA, trusted, not yet issuing (stage Overlap).
    pub next: Option<Window>,
    /// The CA the leaves moved away from, still trusted (stage LeavesMoved).
    pub previous: Option<Window>,
    /// When the bundle holding `next` was in every Secret that carries it.
    pub published_at: Option<i64>,
    /// Until when leaves signed by `previous` may be valid (recorded when they moved).
    pub previous_leaves_until: Option<i64>,
}

/// Where a rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Stable,
    Overlap,
    LeavesMoved,
}

/// Whether the pods accept client certificates of the next CA (they have loaded the
/// bundle holding it), as far as the operator checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodTrust {
    /// Not asked (asked only once the overlap has lasted long enough).
    Unchecked,
    /// Every pod that answers accepts them.
    All,
    /// These pods answer with the current CA's client certificate but refuse the next's.
    Missing(Vec<String>),
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing until `next_check`.
    Wait,
    /// Make a new CA and add it to the bundle.
    Introduce,
    /// Ask the pods whether they accept client certificates of the next CA, then decide
    /// again with the answer.
    CheckPods,
    /// The next CA issues every leaf from now on; the current one stays trusted.
    MoveLeaves,
    /// Remove the previous CA from the bundle.
    RemovePrevious,
    /// The issuing CA has expired and nothing can take over with an overlap: a new CA
    /// replaces it at once (clients must trust it before they connect again).
    Replace,
}

/// The decision for one reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub stage: Stage,
    pub step: Step,
    /// When the next step is due (seconds since the epoch): the rotation's start
    /// (Stable), the leaves' move (Overlap), the old CA's removal (LeavesMoved).
    pub next_step_at: i64,
    /// When to look again, if nothing else triggers a reconcile.
    pub next_check: i64,
    /// The pods that hold the leaves' move back, past its time.
    pub waiting_for: Vec<String>,
}

/// How soon to ask the pods again when some do not accept the next CA yet.
pub const POD_RECHECK_SECS: i64 = 5;

/// The decision for `state` at `now`. `pods` is what the pods answered (or
/// [`PodTrust::Unchecked`]); a caller that gets [`Step::CheckPods`] asks them and calls
/// again.
pub fn decide(state: &CaState, now: i64, pods: &PodTrust) -> Decision {
    let current = state.current;
    let decision = |stage, step, next_step_at: i64| Decision {
        stage,
        step,
        next_step_at,
        next_check: next_step_at.max(now.saturating_add(1)),
        waiting_for: Vec::new(),
    };
    if let Some(next) = state.next {
        // Overlap: the leaves move after the overlap and once every pod trusts `next`.
        let published = state.published_at.unwrap_or(now);
        let move_at = published
            .saturating_add(current.overlap())
            .min(current.not_after);
        if next.expired(now) {
            // A successor that expired unused: start over.
            return decision(Stage::Overlap, Step::Replace, now);
        }
        if current.expired(now) {
            // Nothing to protect any more: the old CA's leaves are invalid already.
            return decision(Stage::Overlap, Step::MoveLeaves, now);
        }
        if now < move_at {
            return decision(Stage::Overlap, Step::Wait, move_at);
        }
        return match pods {
            PodTrust::Unchecked => decision(Stage::Overlap, Step::CheckPods, move_at),
            PodTrust::All => decision(Stage::Overlap, Step::MoveLeaves, move_at),
            PodTrust::Missing(missing) => Decision {
                waiting_for: missing.clone(),
                next_check: now
                    .saturating_add(POD_RECHECK_SECS)
                    .min(current.not_after.max(now.saturating_add(1))),
                ..decision(Stage::Overlap, Step::Wait, move_at)
            },
        };
    }
    if current.expired(now) {
        return decision(Stage::Stable, Step::Replace, now);
    }
    if let Some(previous) = state.previous {
        let until = state
            .previous_leaves_until
            .map_or(previous.not_after, |t| t.min(previous.not_after));
        // Never hold up the current CA's own rotation.
        let remove_at = until.min(current.rotate_at());
        let step = if now >= remove_at {
            Step::RemovePrevious
        } else {
            Step::Wait
        };
        return decision(Stage::LeavesMoved, step, remove_at);
    }
    let rotate_at = current.rotate_at();
    let step = if now >= rotate_at {
        Step::Introduce
    } else {
        Step::Wait
    };
    decision(Stage::Stable, step, rotate_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA1: Window = Window {
        not_before: 0,
        not_after: 120,
    };
    const CA2: Window = Window {
        not_before: 80,
        not_after: 200,
    };

    fn stable() -> CaState {
        CaState {
            current: CA1,
            next: None,
            previous: None,
            published_at: None,
            previous_leaves_until: None,
        }
    }

    fn overlap(published_at: Option<i64>) -> CaState {
        CaState {
            next: Some(CA2),
            published_at,
            ..stable()
        }
    }

    fn moved(previous_leaves_until: Option<i64>) -> CaState {
        CaState {
            current: CA2,
            previous: Some(CA1),
            previous_leaves_until,
            ..stable()
        }
    }

    /// (case, state, now, pods, stage, step, next_step_at, next_check)
    type Row = (&'static str, CaState, i64, PodTrust, Stage, Step, i64, i64);

    /// A 120 s CA from 0: the successor at 80 (two thirds), the leaves move 20 s (a
    /// sixth) after the bundle was published, the old CA leaves the bundle at 120 (its
    /// expiry) or when its last leaf expires.
    #[test]
    fn the_rotation_by_stage_and_time() {
        use PodTrust::{All, Missing, Unchecked};
        use Stage::{LeavesMoved, Overlap, Stable};
        use Step::{CheckPods, Introduce, MoveLeaves, RemovePrevious, Replace, Wait};
        let missing = Missing(vec!["kss-1".to_string()]);
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            // (case, state, now, pods, stage, step, next_step_at, next_check)
            ("fresh CA", stable(), 0, Unchecked, Stable, Wait, 80, 80),
            ("just before two thirds", stable(), 79, Unchecked, Stable, Wait, 80, 80),
            ("two thirds", stable(), 80, Unchecked, Stable, Introduce, 80, 81),
            ("operator was down", stable(), 110, Unchecked, Stable, Introduce, 80, 111),
            ("expired, alone", stable(), 120, Unchecked, Stable, Replace, 120, 121),
            ("introduced, not yet published", overlap(None), 81, Unchecked, Overlap, Wait, 101, 101),
            ("published", overlap(Some(81)), 81, Unchecked, Overlap, Wait, 101, 101),
            ("overlap not over", overlap(Some(81)), 100, Unchecked, Overlap, Wait, 101, 101),
            ("overlap over: ask the pods", overlap(Some(81)), 101, Unchecked, Overlap, CheckPods, 101, 102),
            ("every pod trusts the new CA", overlap(Some(81)), 101, All, Overlap, MoveLeaves, 101, 102),
            ("a pod does not yet", overlap(Some(81)), 101, missing.clone(), Overlap, Wait, 101, 106),
            ("still not, near the old CA's end", overlap(Some(81)), 117, missing.clone(), Overlap, Wait, 101, 120),
            ("old CA expired: move regardless", overlap(Some(81)), 120, missing.clone(), Overlap, MoveLeaves, 120, 121),
            ("published late: move by the old CA's end", overlap(Some(115)), 119, Unchecked, Overlap, Wait, 120, 120),
            ("both expired", overlap(Some(81)), 200, Unchecked, Overlap, Replace, 200, 201),
            ("moved: old CA kept to its end", moved(None), 101, Unchecked, LeavesMoved, Wait, 120, 120),
            ("moved: its last leaf ends first", moved(Some(110)), 101, Unchecked, LeavesMoved, Wait, 110, 110),
            ("moved: its last leaf ended", moved(Some(110)), 110, Unchecked, LeavesMoved, RemovePrevious, 110, 111),
            ("moved: old CA expired", moved(Some(500)), 120, Unchecked, LeavesMoved, RemovePrevious, 120, 121),
            ("moved: the new CA's own two thirds come first", CaState {
                previous: Some(Window { not_before: 0, not_after: 1000 }), ..moved(None)
            }, 160, Unchecked, LeavesMoved, RemovePrevious, 160, 161),
            ("new CA alone", CaState { current: CA2, ..stable() }, 121, Unchecked, Stable, Wait, 160, 160),
            ("new CA at two thirds", CaState { current: CA2, ..stable() }, 160, Unchecked, Stable, Introduce, 160, 161),
        ];
        for (case, state, now, pods, stage, step, next_step_at, next_check) in table {
            let d = decide(&state, now, &pods);
            assert_eq!(
                (d.stage, d.step, d.next_step_at, d.next_check),
                (stage, step, next_step_at, next_check),
                "{case}"
            );
            assert!(d.next_check > now, "{case}: look again later, never now");
        }
        let d = decide(&overlap(Some(81)), 101, &missing);
        assert_eq!(d.waiting_for, vec!["kss-1".to_string()]);
    }

    #[test]
    fn a_ten_year_ca_rotates_after_six_years_and_eight_months() {
        let year = 365 * 24 * 3600;
        let ca = Window {
            not_before: 0,
            not_after: 10 * year,
        };
        assert_eq!(ca.rotate_at(), 10 * year * 2 / 3);
        // Clients have twenty months to refresh their trust.
        assert_eq!(ca.overlap(), 10 * year / 6);
        let d = decide(
            &CaState {
                current: ca,
                next: None,
                previous: None,
                published_at: None,
                previous_leaves_until: None,
            },
            0,
            &PodTrust::Unchecked,
        );
        assert_eq!((d.step, d.next_check), (Step::Wait, ca.rotate_at()));
    }
}
