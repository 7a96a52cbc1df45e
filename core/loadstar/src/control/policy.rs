//! What policy plugins say, as the loop uses it: their last good constraints, kept until each
//! entry ends, and the safe value that replaces them while a policy is failing.
//!
//! How each kind of constraint reaches the loop:
//! - **limits** become external limits with the source `plugin:<name>` (the minimum of every
//!   source wins, so a policy can only lower what the site file allows);
//! - **prices** price the horizon plan's slots (the first policy in site-file order that
//!   covers a slot prices it) and are passed on in every policy's snapshot;
//! - **solar** surplus caps the EVSEs the same policy hints on (weight > 0), shared equally
//!   per line (the plan does not count it: it is for those EVSEs only);
//! - **hints**: a priority orders who is served first, a weight shares within a priority, and
//!   weight 0 switches the EVSE off (0 A) with the hint's reason.
//!
//! A failing policy (an error, a trap, a timeout, a component that does not load) keeps its
//! last constraints until each ends. On a node where none covers the moment any more, its safe
//! value applies: the site file's `safe_limits` for that node, else the lowest limit the policy
//! gave it last. Hints without an end lapse, and the EVSEs a failing policy ran on solar
//! surplus get nothing once its last surplus ends.
//!
//! **Must never** let a failure loosen a limit, or turn surplus-only charging into charging
//! from the grid.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use loadstar_optimizer::allocate::Evse;
use loadstar_optimizer::model::PerLine;
use serde::Serialize;

use super::ExternalLimit;
use crate::plugins::wit;

/// How far ahead a safe value is stated (it is worked out again every tick, and lasts while
/// the policy fails).
const SAFE_FOR: TimeDelta = TimeDelta::days(365);

/// A limit on a node from a policy, `[from, until)`. A line the policy left open is infinite.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyLimit {
    pub node: String,
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub limit: PerLine,
    pub reason: String,
}

/// A price, currency per kWh, for `[from, until)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyPrice {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub price: f64,
}

/// Solar surplus for the policy's EVSEs, A per line, `[from, until)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySolar {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub surplus: PerLine,
    pub reason: String,
}

/// A hint for one EVSE (`station/evse`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyHint {
    pub evse: String,
    pub priority: Option<i32>,
    pub weight: Option<f64>,
    /// `None`: until the next evaluation.
    pub until: Option<DateTime<Utc>>,
    pub reason: String,
}

/// One evaluation's constraints, in the loop's types.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PolicyOutput {
    pub limits: Vec<PolicyLimit>,
    pub prices: Vec<PolicyPrice>,
    pub solar: Vec<PolicySolar>,
    pub hints: Vec<PolicyHint>,
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn lines(p: &wit::PerLine, open: f64) -> PerLine {
    PerLine::new(
        p.l1.unwrap_or(open),
        p.l2.unwrap_or(open),
        p.l3.unwrap_or(open),
    )
}

impl PolicyOutput {
    /// Converts what the host checked (finite values, windows in order). Limits on nodes the
    /// site does not have are dropped and returned as warnings: they cannot be applied.
    pub fn from_wit(c: &wit::Constraints, has_node: impl Fn(&str) -> bool) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        let limits = c
            .limits
            .iter()
            .filter(|l| {
                let known = has_node(&l.node);
                if !known {
                    warnings.push(format!(
                        "limit on unknown node {:?} ignored ({})",
                        l.node, l.reason
                    ));
                }
                known
            })
            .map(|l| PolicyLimit {
                node: l.node.clone(),
                from: at(l.start),
                until: at(l.end),
                limit: lines(&l.limit, f64::INFINITY),
                reason: l.reason.clone(),
            })
            .collect();
        let prices = c
            .prices
            .iter()
            .map(|p| PolicyPrice {
                from: at(p.start),
                until: at(p.end),
                price: p.price,
            })
            .collect();
        let solar = c
            .solar
            .iter()
            .map(|s| PolicySolar {
                from: at(s.start),
                until: at(s.end),
                // A line without a value has no surplus.
                surplus: lines(&s.surplus, 0.0).map(|a| a.max(0.0)),
                reason: s.reason.clone(),
            })
            .collect();
        let hints = c
            .hints
            .iter()
            .map(|h| PolicyHint {
                evse: h.evse.clone(),
                priority: h.priority,
                weight: h.weight,
                until: h.until.map(at),
                reason: h.reason.clone(),
            })
            .collect();
        (
            PolicyOutput {
                limits,
                prices,
                solar,
                hints,
            },
            warnings,
        )
    }
}

/// One policy plugin as the loop knows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyState {
    /// Position in the site file (decides whose prices win).
    pub order: usize,
    /// The site file's safe value per node, A per line.
    pub safe_limits: BTreeMap<String, f64>,
    /// The last good output and when it came.
    pub last: Option<(DateTime<Utc>, PolicyOutput)>,
    /// Why the latest evaluation failed; `None` while it succeeds.
    pub failing: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
}

/// What the policies say about one EVSE now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvseRule {
    pub priority: Option<u8>,
    pub weight: Option<f64>,
    /// Switched off (0 A), and why.
    pub off: Option<String>,
    /// Capped at its share of a policy's solar surplus (A per line) on the lines it uses, with
    /// the number of EVSEs sharing each line filled in by the loop.
    pub solar: Option<(String, PerLine)>,
}

impl PolicyState {
    /// A policy of the site file, not yet evaluated.
    pub fn new(order: usize, safe_limits: BTreeMap<String, f64>) -> Self {
        PolicyState {
            order,
            safe_limits,
            ..PolicyState::default()
        }
    }

    /// Whether its solar EVSEs are the ones it hinted on in its last output.
    fn runs_on_solar(&self) -> bool {
        self.last.as_ref().is_some_and(|(_, o)| !o.solar.is_empty())
    }

    /// The limits it sets at `now` (and announces for later), as external limits of
    /// `plugin:<name>`, safe values included.
    pub fn limits(&self, name: &str, now: DateTime<Utc>) -> Vec<ExternalLimit> {
        let source = format!("plugin:{name}");
        let mut out: Vec<ExternalLimit> = self
            .last
            .iter()
            .flat_map(|(_, o)| &o.limits)
            .filter(|l| l.until > now)
            .map(|l| ExternalLimit {
                source: source.clone(),
                node: l.node.clone(),
                limit: l.limit,
                from: l.from,
                until: l.until,
                reason: l.reason.clone(),
            })
            .collect();
        if self.failing.is_none() {
            return out;
        }
        // Nodes it limited last, with the lowest value it gave each; then the configured ones.
        let mut lowest: BTreeMap<&str, PerLine> = BTreeMap::new();
        for l in self.last.iter().flat_map(|(_, o)| &o.limits) {
            let e = lowest
                .entry(l.node.as_str())
                .or_insert(PerLine::splat(f64::INFINITY));
            *e = e.min(l.limit);
        }
        for (node, amps) in &self.safe_limits {
            lowest.insert(node.as_str(), PerLine::splat(*amps));
        }
        let since = self.failing_since.unwrap_or(now);
        for (node, safe) in lowest {
            let covered = out
                .iter()
                .any(|l| l.node == node && l.from <= now && now < l.until);
            if !covered {
                // Stable times (from when the failure or the last limit ended), so the plan
                // does not see a new limit every tick.
                let ended = self
                    .last
                    .iter()
                    .flat_map(|(_, o)| &o.limits)
                    .filter(|l| l.node == node && l.until <= now)
                    .map(|l| l.until)
                    .max();
                let from = ended.map_or(since, |e| e.max(since)).min(now);
                out.push(ExternalLimit {
                    source: format!("{source}:safe"),
                    node: node.to_owned(),
                    limit: safe,
                    from,
                    until: from + SAFE_FOR,
                    reason: format!("{name} is failing and its last limits have ended: safe value"),
                });
            }
        }
        out
    }

    /// Its surplus at `now`: `Some(zero)` once its last one ended while it runs EVSEs on
    /// solar, `None` if it does not.
    fn surplus_at(&self, now: DateTime<Utc>) -> Option<(&str, PerLine)> {
        let (_, o) = self.last.as_ref()?;
        if o.solar.is_empty() {
            return None;
        }
        Some(
            o.solar
                .iter()
                .filter(|s| s.from <= now && now < s.until)
                .map(|s| (s.reason.as_str(), s.surplus))
                .fold(("no surplus", PerLine::ZERO), |acc, s| (s.0, acc.1 + s.1)),
        )
    }
}

/// Every policy of the site, by name.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    pub by_name: BTreeMap<String, PolicyState>,
}

impl Policies {
    fn in_order(&self) -> Vec<(&String, &PolicyState)> {
        let mut v: Vec<_> = self.by_name.iter().collect();
        v.sort_by_key(|(_, p)| p.order);
        v
    }

    /// Every policy's limits at `now`.
    pub fn limits(&self, now: DateTime<Utc>) -> Vec<ExternalLimit> {
        self.in_order()
            .into_iter()
            .flat_map(|(name, p)| p.limits(name, now))
            .collect()
    }

    /// The price at `t`: the first policy (site-file order) with a price then.
    pub fn price_at(&self, t: DateTime<Utc>) -> Option<f64> {
        self.in_order().into_iter().find_map(|(_, p)| {
            p.last.as_ref().and_then(|(_, o)| {
                o.prices
                    .iter()
                    .find(|s| s.from <= t && t < s.until)
                    .map(|s| s.price)
            })
        })
    }

    /// Every price slot still ahead, merged in site-file order (for snapshots).
    pub fn prices(&self, now: DateTime<Utc>) -> Vec<PolicyPrice> {
        let mut out: Vec<PolicyPrice> = Vec::new();
        for (_, p) in self.in_order() {
            for s in p.last.iter().flat_map(|(_, o)| &o.prices) {
                if s.until > now && !out.iter().any(|o| o.from < s.until && s.from < o.until) {
                    out.push(s.clone());
                }
            }
        }
        out.sort_by_key(|s| s.from);
        out
    }

    /// The solar surplus (all lines, A) the policies announce at `t`.
    pub fn solar_at(&self, t: DateTime<Utc>) -> PerLine {
        self.by_name
            .values()
            .flat_map(|p| p.last.iter().flat_map(|(_, o)| &o.solar))
            .filter(|s| s.from <= t && t < s.until)
            .fold(PerLine::ZERO, |acc, s| acc + s.surplus)
    }

    /// What the policies say about EVSE `evse` at `now`. The first policy (site-file order)
    /// with a priority or weight decides it; any policy may switch it off. For many EVSEs at
    /// once, [`Policies::rules`] indexes the hints once.
    pub fn rule(&self, evse: &str, now: DateTime<Utc>) -> EvseRule {
        self.rules(now).rule(evse)
    }

    /// The policies at `now`, in site-file order, with each one's hints in force indexed by
    /// EVSE: a tick asks for every EVSE's rule, and scanning every hint list for each would
    /// cost EVSEs × hints.
    pub fn rules(&self, now: DateTime<Utc>) -> PolicyRules<'_> {
        let policies = self
            .in_order()
            .into_iter()
            .map(|(name, p)| {
                let mut hints: HashMap<&str, &PolicyHint> = HashMap::new();
                let mut named: HashSet<&str> = HashSet::new();
                let solar = p.runs_on_solar();
                for h in p.last.iter().flat_map(|(_, o)| &o.hints) {
                    if solar {
                        named.insert(h.evse.as_str());
                    }
                    let in_force = match h.until {
                        Some(until) => now < until,
                        // Until the next evaluation: only while the latest one succeeded.
                        None => p.failing.is_none(),
                    };
                    if in_force {
                        // The first hint in force for an EVSE counts.
                        hints.entry(h.evse.as_str()).or_insert(h);
                    }
                }
                IndexedPolicy {
                    name,
                    hints,
                    named,
                    surplus: if solar { p.surplus_at(now) } else { None },
                }
            })
            .collect();
        PolicyRules { policies }
    }

    /// The EVSEs policy `name` runs on solar surplus now (hinted on, surplus left).
    pub fn solar_evses(&self, name: &str, now: DateTime<Utc>) -> Vec<String> {
        let Some(p) = self.by_name.get(name) else {
            return Vec::new();
        };
        let rules = self.rules(now);
        p.last
            .iter()
            .flat_map(|(_, o)| &o.hints)
            .filter(|h| rules.rule(&h.evse).solar.is_some_and(|(n, _)| n == name))
            .map(|h| h.evse.clone())
            .collect()
    }
}

/// [`Policies::rules`]: the policies at one moment, their hints indexed by EVSE.
pub struct PolicyRules<'a> {
    policies: Vec<IndexedPolicy<'a>>,
}

struct IndexedPolicy<'a> {
    name: &'a String,
    /// The first hint in force per EVSE.
    hints: HashMap<&'a str, &'a PolicyHint>,
    /// Every EVSE its last output names, when it runs EVSEs on solar surplus (even after
    /// their hints lapsed).
    named: HashSet<&'a str>,
    /// Its surplus now, when it runs EVSEs on solar surplus.
    surplus: Option<(&'a str, PerLine)>,
}

impl PolicyRules<'_> {
    /// What the policies say about EVSE `evse`: see [`Policies::rule`].
    pub fn rule(&self, evse: &str) -> EvseRule {
        let mut rule = EvseRule::default();
        for p in &self.policies {
            let hint = p.hints.get(evse).copied();
            if let Some(h) = hint {
                if h.weight.is_some_and(|w| w <= 0.0) {
                    rule.off
                        .get_or_insert_with(|| format!("plugin:{}: {}", p.name, h.reason));
                    continue;
                }
                if rule.priority.is_none() {
                    rule.priority = h.priority.map(|v| v.clamp(0, i32::from(u8::MAX)) as u8);
                }
                if rule.weight.is_none() {
                    rule.weight = h.weight;
                }
            }
            if p.named.contains(evse) && rule.off.is_none() {
                match (hint, p.surplus) {
                    (Some(_), Some((_, surplus))) if surplus.sum() > 0.0 => {
                        if rule.solar.is_none() {
                            rule.solar = Some((p.name.clone(), surplus));
                        }
                    }
                    (_, Some((why, _))) => {
                        rule.off = Some(format!("plugin:{}: {why}", p.name));
                    }
                    (_, None) => {}
                }
            }
        }
        rule
    }
}

/// Applies the policies' word to the tick's problem: a priority is raised to the hint's, a
/// weight multiplied by it, and an EVSE on solar surplus capped at its share of the surplus on
/// the lines it uses (shared equally among that policy's EVSEs on each line). The policy
/// guarantees the minimums of the EVSEs it keeps on, so a share below the minimum still gets
/// the minimum.
pub fn apply(evses: &mut [Evse], rules: &[EvseRule]) {
    let sharing = solar_sharing(evses.iter(), rules);
    for (e, r) in evses.iter_mut().zip(rules) {
        shape(e, r, &sharing);
    }
}

/// What [`apply`] would make of EVSE `j` were it `e` instead (the same EVSE on another phase
/// count), beside the others of `evses` (as they were before [`apply`]).
pub fn apply_one(evses: &[Evse], rules: &[EvseRule], j: usize, e: &mut Evse) {
    let sharing = {
        let instead: &Evse = e;
        solar_sharing(
            evses
                .iter()
                .enumerate()
                .map(|(i, x)| if i == j { instead } else { x }),
            rules,
        )
    };
    if let Some(r) = rules.get(j) {
        shape(e, r, &sharing);
    }
}

/// How many EVSEs share each policy's surplus, per line.
fn solar_sharing<'a, 'r>(
    evses: impl Iterator<Item = &'a Evse>,
    rules: &'r [EvseRule],
) -> BTreeMap<&'r str, PerLine> {
    let mut sharing: BTreeMap<&str, PerLine> = BTreeMap::new();
    for (e, r) in evses.zip(rules) {
        if let Some((name, _)) = &r.solar {
            let used = e
                .circuit
                .line_load(e.ev_phases, 1.0)
                .map(|c| if c > 0.0 { 1.0 } else { 0.0 });
            *sharing.entry(name.as_str()).or_insert(PerLine::ZERO) += used;
        }
    }
    sharing
}

fn shape(e: &mut Evse, r: &EvseRule, sharing: &BTreeMap<&str, PerLine>) {
    if let Some(p) = r.priority {
        e.priority = e.priority.max(p);
    }
    if let Some(w) = r.weight.filter(|w| w.is_finite() && *w > 0.0) {
        e.weight *= w;
    }
    if let Some((name, surplus)) = &r.solar {
        let count = sharing
            .get(name.as_str())
            .copied()
            .unwrap_or(PerLine::splat(1.0));
        let per_amp = e.circuit.line_load(e.ev_phases, 1.0);
        let cap = per_amp
            .iter()
            .filter(|(_, c)| *c > 0.0)
            .map(|(line, c)| surplus[line] / count[line].max(1.0) / c)
            .fold(f64::INFINITY, f64::min);
        if cap.is_finite() {
            e.max_a = e.max_a.min(cap.max(e.min_a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn limit(node: &str, from: i64, until: i64, amps: f64) -> PolicyLimit {
        PolicyLimit {
            node: node.into(),
            from: t(from),
            until: t(until),
            limit: PerLine::splat(amps),
            reason: "test".into(),
        }
    }

    fn state(output: PolicyOutput, safe: &[(&str, f64)]) -> PolicyState {
        PolicyState {
            order: 0,
            safe_limits: safe.iter().map(|(n, a)| ((*n).into(), *a)).collect(),
            last: Some((t(0), output)),
            failing: None,
            failing_since: None,
        }
    }

    fn fail(p: &mut PolicyState) {
        p.failing = Some("trap".into());
        p.failing_since = Some(t(1));
    }

    #[test]
    fn a_failing_policy_keeps_its_limits_until_they_end_then_its_safe_value() {
        let out = PolicyOutput {
            limits: vec![limit("grid", 0, 600, 50.0)],
            ..Default::default()
        };
        let mut p = state(out, &[("grid", 40.0), ("feeder", 20.0)]);
        assert_eq!(
            p.limits("peak", t(10)).len(),
            1,
            "healthy: its own limits only"
        );
        fail(&mut p);
        let during = p.limits("peak", t(10));
        let grid: Vec<_> = during.iter().filter(|l| l.node == "grid").collect();
        assert_eq!(grid.len(), 1, "the grid's last limit still covers now");
        assert_eq!(grid[0].limit, PerLine::splat(50.0));
        let feeder: Vec<_> = during.iter().filter(|l| l.node == "feeder").collect();
        assert_eq!(
            feeder.len(),
            1,
            "a configured node without a limit gets its safe value"
        );
        assert_eq!(feeder[0].source, "plugin:peak:safe");
        let after = p.limits("peak", t(600));
        let grid: Vec<_> = after.iter().filter(|l| l.node == "grid").collect();
        assert_eq!(grid.len(), 1);
        assert_eq!(grid[0].limit, PerLine::splat(40.0));
        assert!(grid[0].from <= t(600) && t(600) < grid[0].until);
    }

    #[test]
    fn without_a_configured_safe_value_the_lowest_last_limit_stays() {
        let out = PolicyOutput {
            limits: vec![limit("grid", 0, 300, 60.0), limit("grid", 300, 600, 45.0)],
            ..Default::default()
        };
        let mut p = state(out, &[]);
        fail(&mut p);
        let after = p.limits("peak", t(900));
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].limit, PerLine::splat(45.0), "never loosens");
        let healthy = state(
            PolicyOutput {
                limits: vec![limit("grid", 0, 300, 60.0)],
                ..Default::default()
            },
            &[],
        );
        assert!(
            healthy.limits("peak", t(900)).is_empty(),
            "healthy and ended: no limit"
        );
    }

    fn hint(evse: &str, weight: Option<f64>, until: Option<i64>) -> PolicyHint {
        PolicyHint {
            evse: evse.into(),
            priority: Some(3),
            weight,
            until: until.map(t),
            reason: "why".into(),
        }
    }

    #[test]
    fn hints_order_and_switch_off_and_lapse_when_the_policy_fails() {
        let out = PolicyOutput {
            hints: vec![
                hint("a/1", Some(2.0), None),
                hint("b/1", Some(0.0), None),
                hint("c/1", None, Some(100)),
            ],
            ..Default::default()
        };
        let mut ps = Policies::default();
        ps.by_name.insert("p".into(), state(out, &[]));
        let a = ps.rule("a/1", t(10));
        assert_eq!((a.priority, a.weight, a.off), (Some(3), Some(2.0), None));
        assert_eq!(ps.rule("b/1", t(10)).off.as_deref(), Some("plugin:p: why"));
        assert_eq!(ps.rule("z/1", t(10)), EvseRule::default());
        fail(ps.by_name.get_mut("p").unwrap());
        assert_eq!(ps.rule("a/1", t(10)), EvseRule::default(), "lapsed");
        assert_eq!(ps.rule("c/1", t(10)).priority, Some(3), "until its end");
        assert_eq!(ps.rule("c/1", t(100)), EvseRule::default());
    }

    #[test]
    fn solar_evses_share_the_surplus_and_get_nothing_once_it_ends() {
        let out = PolicyOutput {
            solar: vec![PolicySolar {
                from: t(0),
                until: t(60),
                surplus: PerLine::new(12.0, 12.0, 12.0),
                reason: "sun".into(),
            }],
            hints: vec![hint("a/1", Some(1.0), None), hint("b/1", Some(0.0), None)],
            ..Default::default()
        };
        let mut ps = Policies::default();
        ps.by_name.insert("sun".into(), state(out, &[]));
        let a = ps.rule("a/1", t(10));
        assert_eq!(a.solar, Some(("sun".into(), PerLine::splat(12.0))));
        assert_eq!(ps.solar_evses("sun", t(10)), vec!["a/1".to_string()]);
        assert!(ps.rule("b/1", t(10)).off.is_some());
        fail(ps.by_name.get_mut("sun").unwrap());
        let later = ps.rule("a/1", t(60));
        assert!(later.solar.is_none());
        assert_eq!(
            later.off.as_deref(),
            Some("plugin:sun: no surplus"),
            "a failed solar policy never lets its EVSEs charge from the grid"
        );
    }

    #[test]
    fn the_first_hint_in_force_counts_and_the_index_answers_like_the_lists() {
        let mut lapsed = hint("a/1", Some(2.0), Some(5));
        lapsed.priority = Some(9);
        let out = PolicyOutput {
            hints: vec![
                lapsed,
                hint("a/1", Some(3.0), None),
                hint("a/1", Some(4.0), None),
            ],
            ..Default::default()
        };
        let mut ps = Policies::default();
        ps.by_name.insert("p".into(), state(out, &[]));
        let rules = ps.rules(t(10));
        let a = rules.rule("a/1");
        assert_eq!(
            a.weight,
            Some(3.0),
            "the lapsed hint is skipped, the next one counts"
        );
        assert_eq!(a.priority, Some(3), "its priority, not the lapsed one's");
        assert_eq!(rules.rule("a/1"), ps.rule("a/1", t(10)));
        assert_eq!(ps.rule("a/1", t(1)).priority, Some(9), "before it lapsed");
    }

    #[test]
    fn the_first_policy_in_file_order_prices_a_slot() {
        let price = |from, until, price| PolicyPrice {
            from: t(from),
            until: t(until),
            price,
        };
        let mut ps = Policies::default();
        let mut tou = state(
            PolicyOutput {
                prices: vec![price(0, 900, 0.30), price(900, 1800, 0.20)],
                ..Default::default()
            },
            &[],
        );
        tou.order = 1;
        ps.by_name.insert("tou".into(), tou);
        ps.by_name.insert(
            "spot".into(),
            state(
                PolicyOutput {
                    prices: vec![price(0, 900, 0.10)],
                    ..Default::default()
                },
                &[],
            ),
        );
        assert_eq!(ps.price_at(t(10)), Some(0.10));
        assert_eq!(ps.price_at(t(1000)), Some(0.20));
        assert_eq!(ps.price_at(t(2000)), None);
        let merged = ps.prices(t(0));
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].price, 0.10);
    }

    #[test]
    fn limits_on_unknown_nodes_are_dropped_with_a_warning() {
        let c = wit::Constraints {
            limits: vec![wit::LimitSlot {
                node: "nowhere".into(),
                start: 0,
                end: 1000,
                limit: wit::PerLine {
                    l1: Some(1.0),
                    l2: None,
                    l3: None,
                },
                reason: "r".into(),
            }],
            prices: Vec::new(),
            solar: Vec::new(),
            hints: Vec::new(),
        };
        let (out, warnings) = PolicyOutput::from_wit(&c, |n| n == "grid");
        assert!(out.limits.is_empty());
        assert_eq!(warnings.len(), 1);
        let (out, _) = PolicyOutput::from_wit(&c, |_| true);
        assert_eq!(out.limits[0].limit.0, [1.0, f64::INFINITY, f64::INFINITY]);
    }
}
