//! The entitlement decision: a pure function of the catalog, the billing state, an override
//! and the clock. No Postgres types here, so every rule is unit-tested with plain `#[test]`
//! and can be read against the README's "The decision" list, rule by rule.
//!
//! Times are microseconds on one timeline (Postgres' `TimestampTz` in practice); the resolver
//! only compares and adds them.

/// Why a check was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    TierInsufficient,
    SubscriptionInactive,
    SubscriptionPaused,
    PaymentIncomplete,
    PaymentPastDue,
    TrialExpired,
    FeatureDisabled,
    LimitExceeded,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::TierInsufficient,
        Reason::SubscriptionInactive,
        Reason::SubscriptionPaused,
        Reason::PaymentIncomplete,
        Reason::PaymentPastDue,
        Reason::TrialExpired,
        Reason::FeatureDisabled,
        Reason::LimitExceeded,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::TierInsufficient => "TIER_INSUFFICIENT",
            Reason::SubscriptionInactive => "SUBSCRIPTION_INACTIVE",
            Reason::SubscriptionPaused => "SUBSCRIPTION_PAUSED",
            Reason::PaymentIncomplete => "PAYMENT_INCOMPLETE",
            Reason::PaymentPastDue => "PAYMENT_PAST_DUE",
            Reason::TrialExpired => "TRIAL_EXPIRED",
            Reason::FeatureDisabled => "FEATURE_DISABLED",
            Reason::LimitExceeded => "LIMIT_EXCEEDED",
        }
    }

    /// Could subscribing to the feature's min tier lift this denial? Every reason but an
    /// admin's revocation and a usage limit (the workspace already has that tier): the
    /// paywall then offers that tier.
    pub fn lifted_by_a_tier(self) -> bool {
        !matches!(self, Reason::FeatureDisabled | Reason::LimitExceeded)
    }

    /// Small stable number, for compact storage (the shared cache, the audit queue).
    pub fn ordinal(self) -> u8 {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0) as u8 + 1
    }

    pub fn from_ordinal(n: u8) -> Option<Reason> {
        n.checked_sub(1).and_then(|i| Reason::ALL.get(i as usize).copied())
    }

    /// The reason a code names (`code()`'s inverse).
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.code() == code)
    }
}

/// Stripe's subscription statuses, plus `None` for "no subscription".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    None,
    Trialing,
    Active,
    PastDue,
    Canceled,
    Unpaid,
    Incomplete,
    IncompleteExpired,
    Paused,
}

impl Status {
    pub const ALL: [(&'static str, Status); 9] = [
        ("none", Status::None),
        ("trialing", Status::Trialing),
        ("active", Status::Active),
        ("past_due", Status::PastDue),
        ("canceled", Status::Canceled),
        ("unpaid", Status::Unpaid),
        ("incomplete", Status::Incomplete),
        ("incomplete_expired", Status::IncompleteExpired),
        ("paused", Status::Paused),
    ];

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.iter().find(|(name, _)| *name == s).map(|(_, st)| *st)
    }

    /// A subscription status as Stripe sends it: every status but `none`, which is ours (a
    /// tier set by an admin, no subscription).
    pub fn parse_stripe(s: &str) -> Option<Status> {
        Status::parse(s).filter(|st| *st != Status::None)
    }
}

/// A workspace's billing state as the resolver needs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Billing {
    pub tier_level: i32,
    pub status: Status,
    pub trial_end: Option<i64>,
    pub past_due_since: Option<i64>,
}

impl Billing {
    /// A workspace with no billing row: tier `free` (level 0), no subscription.
    pub const FREE: Billing =
        Billing { tier_level: 0, status: Status::None, trial_end: None, past_due_since: None };
}

/// An admin grant (`enabled`) or revoke of one feature for one workspace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Override {
    pub enabled: bool,
    pub expires_at: Option<i64>,
}

/// A metered or counted feature's usage in the current period, and its limit (`None` =
/// unlimited, explicitly; a missing limit arrives here as `Some(0)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub used: i64,
    pub limit: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Inputs {
    pub feature_min_level: i32,
    pub billing: Billing,
    pub override_: Option<Override>,
    /// Stripe grants the feature to the workspace: an item of the subscription it follows
    /// (an add-on) or an active entitlement maps to it. Beats the tier, not an override nor
    /// the subscription's status.
    pub stripe_grant: bool,
    /// `None` for a boolean feature.
    pub usage: Option<Usage>,
    /// `pg_entitlements.past_due_grace`, in microseconds.
    pub past_due_grace: i64,
    pub now: i64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub enabled: bool,
    /// `None` exactly when `enabled`.
    pub reason: Option<Reason>,
    /// The first future instant at which the same inputs could decide otherwise (a trial end,
    /// the end of the past-due grace, an override's expiry); `None` if the decision holds
    /// until the inputs change.
    pub valid_until: Option<i64>,
}

impl Decision {
    fn allow(valid_until: Option<i64>) -> Decision {
        Decision { enabled: true, reason: None, valid_until }
    }
    fn deny(reason: Reason, valid_until: Option<i64>) -> Decision {
        Decision { enabled: false, reason: Some(reason), valid_until }
    }
}

/// The rules, in order (README, "The decision"): the feature's rules, then its usage limit.
pub fn decide(i: &Inputs) -> Decision {
    within_limit(decide_access(i), i.usage)
}

/// 6. A metered or counted feature that passes the rules above (`access`, rules 1 to 5) is
/// allowed only while used < limit. Apart so that a cached `access` can be completed with the
/// counter read now.
pub fn within_limit(access: Decision, usage: Option<Usage>) -> Decision {
    match usage {
        Some(Usage { used, limit: Some(limit) }) if access.enabled && used >= limit => {
            Decision::deny(Reason::LimitExceeded, access.valid_until)
        }
        _ => access,
    }
}

/// Rules 1 to 5: may the workspace use the feature at all.
pub fn decide_access(i: &Inputs) -> Decision {
    let now = i.now;
    let future = |t: Option<i64>| t.filter(|t| *t > now);

    // 1. An unexpired override decides.
    if let Some(o) = i.override_ {
        if o.expires_at.is_none_or(|exp| now < exp) {
            return if o.enabled {
                Decision::allow(o.expires_at)
            } else {
                Decision::deny(Reason::FeatureDisabled, o.expires_at)
            };
        }
    }

    // 2. Free features stay allowed whatever the subscription's state.
    if i.feature_min_level <= 0 {
        return Decision::allow(None);
    }

    // 3. The subscription's status.
    let b = &i.billing;
    let mut valid_until = None;
    match b.status {
        Status::Canceled | Status::Unpaid | Status::IncompleteExpired => {
            return Decision::deny(Reason::SubscriptionInactive, None)
        }
        Status::Paused => return Decision::deny(Reason::SubscriptionPaused, None),
        Status::Incomplete => return Decision::deny(Reason::PaymentIncomplete, None),
        Status::PastDue => {
            // A missing start (never written by our paths) counts as "the grace starts now".
            let grace_end = b.past_due_since.unwrap_or(now).saturating_add(i.past_due_grace);
            if now >= grace_end {
                return Decision::deny(Reason::PaymentPastDue, None);
            }
            valid_until = Some(grace_end);
        }
        Status::Trialing => {
            if let Some(end) = b.trial_end {
                if end <= now {
                    return Decision::deny(Reason::TrialExpired, None);
                }
            }
            valid_until = future(b.trial_end);
        }
        Status::Active | Status::None => {}
    }

    // 4. The tier, unless Stripe grants the feature on its own.
    if b.tier_level < i.feature_min_level && !i.stripe_grant {
        return Decision::deny(Reason::TierInsufficient, valid_until);
    }

    // 5. Allowed.
    Decision::allow(valid_until)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000_000;
    const DAY: i64 = 86_400_000_000;
    const GRACE: i64 = 7 * DAY;

    fn billing(level: i32, status: Status) -> Billing {
        Billing { tier_level: level, status, trial_end: None, past_due_since: None }
    }

    fn inputs(min: i32, b: Billing, o: Option<Override>) -> Inputs {
        Inputs { feature_min_level: min, billing: b, override_: o, stripe_grant: false, usage: None, past_due_grace: GRACE, now: NOW }
    }

    fn granted(i: Inputs) -> Inputs {
        Inputs { stripe_grant: true, ..i }
    }

    /// One case per rule and per denial code the resolver can give.
    #[test]
    fn table_of_rules() {
        use Reason::*;
        use Status as S;
        let pd = |since| Billing { past_due_since: Some(since), ..billing(4, S::PastDue) };
        let tr = |end| Billing { trial_end: Some(end), ..billing(4, S::Trialing) };
        let cases: Vec<(&str, Inputs, Option<Reason>)> = vec![
            ("override revoke beats enterprise", inputs(1, billing(4, S::Active), Some(Override { enabled: false, expires_at: None })), Some(FeatureDisabled)),
            ("override grant beats canceled", inputs(4, billing(0, S::Canceled), Some(Override { enabled: true, expires_at: None })), None),
            ("free feature while canceled", inputs(0, billing(2, S::Canceled), None), None),
            ("free feature while paused", inputs(0, billing(2, S::Paused), None), None),
            ("canceled", inputs(1, billing(4, S::Canceled), None), Some(SubscriptionInactive)),
            ("unpaid", inputs(1, billing(4, S::Unpaid), None), Some(SubscriptionInactive)),
            ("incomplete_expired", inputs(1, billing(4, S::IncompleteExpired), None), Some(SubscriptionInactive)),
            ("paused", inputs(1, billing(4, S::Paused), None), Some(SubscriptionPaused)),
            ("incomplete", inputs(1, billing(4, S::Incomplete), None), Some(PaymentIncomplete)),
            ("past_due within grace", inputs(1, pd(NOW - DAY), None), None),
            ("past_due beyond grace", inputs(1, pd(NOW - 8 * DAY), None), Some(PaymentPastDue)),
            ("trial running", inputs(1, tr(NOW + DAY), None), None),
            ("trial over", inputs(1, tr(NOW - DAY), None), Some(TrialExpired)),
            ("trial without an end", inputs(1, billing(4, S::Trialing), None), None),
            ("tier below", inputs(2, billing(1, S::Active), None), Some(TierInsufficient)),
            ("tier equal", inputs(2, billing(2, S::Active), None), None),
            ("tier above", inputs(2, billing(3, S::Active), None), None),
            ("no subscription, free tier, paid feature", inputs(1, Billing::FREE, None), Some(TierInsufficient)),
            ("no subscription but tier set by admin", inputs(1, billing(1, S::None), None), None),
            ("past_due within grace still needs the tier", inputs(3, Billing { past_due_since: Some(NOW), ..billing(1, S::PastDue) }, None), Some(TierInsufficient)),
            ("metered, used below the limit", metered(inputs(1, billing(1, S::Active), None), 299, Some(300)), None),
            ("metered, used at the limit", metered(inputs(1, billing(1, S::Active), None), 300, Some(300)), Some(LimitExceeded)),
            ("metered, used past the limit (soft)", metered(inputs(1, billing(1, S::Active), None), 301, Some(300)), Some(LimitExceeded)),
            ("metered, no limit row = 0", metered(inputs(0, Billing::FREE, None), 0, Some(0)), Some(LimitExceeded)),
            ("metered, unlimited", metered(inputs(1, billing(1, S::Active), None), i64::MAX, None), None),
            ("metered, the rules come first", metered(inputs(2, billing(1, S::Active), None), 500, Some(300)), Some(TierInsufficient)),
            ("metered, a grant still meets the limit", metered(inputs(4, Billing::FREE, Some(Override { enabled: true, expires_at: None })), 3, Some(3)), Some(LimitExceeded)),
            ("metered, a revoke beats the limit", metered(inputs(0, Billing::FREE, Some(Override { enabled: false, expires_at: None })), 0, None), Some(FeatureDisabled)),
            ("stripe grant beats the tier", granted(inputs(3, billing(1, S::Active), None)), None),
            ("stripe grant without a subscription", granted(inputs(3, Billing::FREE, None)), None),
            ("override revoke beats a stripe grant", granted(inputs(3, billing(1, S::Active), Some(Override { enabled: false, expires_at: None }))), Some(FeatureDisabled)),
            ("stripe grant, status still applies: canceled", granted(inputs(3, billing(1, S::Canceled), None)), Some(SubscriptionInactive)),
            ("stripe grant, status still applies: past_due beyond grace", granted(inputs(3, pd(NOW - 8 * DAY), None)), Some(PaymentPastDue)),
            ("stripe grant, status still applies: trial over", granted(inputs(3, tr(NOW - DAY), None)), Some(TrialExpired)),
            ("stripe grant still meets the limit", metered(granted(inputs(3, billing(1, S::Active), None)), 7, Some(7)), Some(LimitExceeded)),
        ];
        for (name, i, want) in cases {
            let d = decide(&i);
            assert_eq!(d.reason, want, "{name}");
            assert_eq!(d.enabled, want.is_none(), "{name}: enabled agrees with reason");
        }
    }

    fn metered(i: Inputs, used: i64, limit: Option<i64>) -> Inputs {
        Inputs { usage: Some(Usage { used, limit }), ..i }
    }

    #[test]
    fn status_check_comes_before_tier_check() {
        let d = decide(&inputs(3, billing(1, Status::Canceled), None));
        assert_eq!(d.reason, Some(Reason::SubscriptionInactive));
    }

    #[test]
    fn trial_ending_exactly_now_is_expired() {
        let b = Billing { trial_end: Some(NOW), ..billing(2, Status::Trialing) };
        assert_eq!(decide(&inputs(1, b, None)).reason, Some(Reason::TrialExpired));
        let b = Billing { trial_end: Some(NOW + 1), ..billing(2, Status::Trialing) };
        let d = decide(&inputs(1, b, None));
        assert!(d.enabled);
        assert_eq!(d.valid_until, Some(NOW + 1));
    }

    #[test]
    fn grace_ending_exactly_now_denies() {
        let b = Billing { past_due_since: Some(NOW - GRACE), ..billing(2, Status::PastDue) };
        assert_eq!(decide(&inputs(1, b, None)).reason, Some(Reason::PaymentPastDue));
        let b = Billing { past_due_since: Some(NOW - GRACE + 1), ..billing(2, Status::PastDue) };
        let d = decide(&inputs(1, b, None));
        assert!(d.enabled);
        assert_eq!(d.valid_until, Some(NOW + 1));
    }

    #[test]
    fn zero_grace_denies_past_due_at_once() {
        let b = Billing { past_due_since: Some(NOW), ..billing(2, Status::PastDue) };
        let i = Inputs { past_due_grace: 0, ..inputs(1, b, None) };
        assert_eq!(decide(&i).reason, Some(Reason::PaymentPastDue));
    }

    #[test]
    fn override_expiring_exactly_now_no_longer_decides() {
        let o = Override { enabled: true, expires_at: Some(NOW) };
        assert_eq!(decide(&inputs(3, billing(0, Status::Active), Some(o))).reason, Some(Reason::TierInsufficient));
        let o = Override { enabled: true, expires_at: Some(NOW + 1) };
        let d = decide(&inputs(3, billing(0, Status::Active), Some(o)));
        assert!(d.enabled);
        assert_eq!(d.valid_until, Some(NOW + 1));
    }

    #[test]
    fn revoke_of_free_feature_denies() {
        let o = Override { enabled: false, expires_at: None };
        assert_eq!(decide(&inputs(0, Billing::FREE, Some(o))).reason, Some(Reason::FeatureDisabled));
    }

    #[test]
    fn settled_decisions_have_no_boundary() {
        assert_eq!(decide(&inputs(1, billing(4, Status::Active), None)).valid_until, None);
        assert_eq!(decide(&inputs(0, billing(0, Status::Canceled), None)).valid_until, None);
        assert_eq!(decide(&inputs(1, billing(4, Status::Canceled), None)).valid_until, None);
    }

    #[test]
    fn huge_grace_saturates_instead_of_overflowing() {
        let b = Billing { past_due_since: Some(i64::MAX - 5), ..billing(2, Status::PastDue) };
        let i = Inputs { past_due_grace: i64::MAX, ..inputs(1, b, None) };
        assert!(decide(&i).enabled);
    }

    #[test]
    fn reason_codes_round_trip_and_are_eight() {
        let codes: std::collections::BTreeSet<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), 8);
        for r in Reason::ALL {
            assert_eq!(Reason::from_ordinal(r.ordinal()), Some(r));
        }
        assert_eq!(Reason::from_ordinal(0), None);
        assert_eq!(Reason::from_ordinal(9), None);
    }

    #[test]
    fn status_parse_knows_stripe_statuses_only() {
        for (name, st) in Status::ALL {
            assert_eq!(Status::parse(name), Some(st));
        }
        assert_eq!(Status::parse("Active"), None);
        assert_eq!(Status::parse(""), None);
    }
}
