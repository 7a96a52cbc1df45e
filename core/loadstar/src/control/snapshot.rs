//! The site as a policy plugin sees it (`site-snapshot` in the WIT contract), built from the
//! same gathered view a tick uses.
//!
//! **Must never** show a policy its own limits as the node's limit (it would ratchet itself
//! down): a node's limit here is the site file's and the non-policy sources'.

use loadstar_optimizer::allocate::effective_limit;
use loadstar_optimizer::model::{Line, PerLine};

use super::{Inner, lock};
use crate::plugins::wit;
use crate::site::GRID_ID;

fn wit_lines(p: PerLine, present: [bool; 3]) -> wit::PerLine {
    let v = |line: Line| {
        let a = p[line];
        (present[line.index()] && a.is_finite()).then_some(a)
    };
    wit::PerLine {
        l1: v(Line::L1),
        l2: v(Line::L2),
        l3: v(Line::L3),
    }
}

/// The WIT status of an EVSE from its connector status and session (2.0.1 says only
/// `Occupied`; the transaction's charging state tells the rest).
fn status(connector: Option<&str>, charging_state: Option<&str>) -> wit::EvseStatus {
    use wit::EvseStatus as S;
    match connector {
        Some("Available") => S::Available,
        Some("Preparing") => S::Preparing,
        Some("Charging") => S::Charging,
        Some("SuspendedEV") => S::SuspendedEv,
        Some("SuspendedEVSE") => S::SuspendedEvse,
        Some("Finishing") => S::Finishing,
        Some("Reserved") => S::Reserved,
        Some("Unavailable") => S::Unavailable,
        Some("Faulted") => S::Faulted,
        Some("Occupied") => match charging_state {
            Some("Charging") => S::Charging,
            Some("SuspendedEV") => S::SuspendedEv,
            Some("SuspendedEVSE") => S::SuspendedEvse,
            _ => S::Preparing,
        },
        _ => S::Unknown,
    }
}

impl Inner {
    pub(super) fn snapshot(&self) -> wit::SiteSnapshot {
        let now = self.clock.now();
        let site = lock(&self.site).clone();
        let config = lock(&self.config).clone();
        let stale = chrono::TimeDelta::from_std(config.stale_after)
            .unwrap_or(chrono::TimeDelta::seconds(30));
        let (node_ids, node_index) = super::node_tree(&site);
        let grid_lines = {
            let lines = site.model().grid().lines();
            [Line::L1, Line::L2, Line::L3].map(|l| lines.contains(&l))
        };
        let external: Vec<_> = {
            let mut limits = lock(&self.limits).clone();
            limits.retain(|l| l.until > now);
            limits
        };
        let nodes = node_ids
            .iter()
            .map(|id| {
                let physical = site.node_limit(id).unwrap_or(PerLine::ZERO);
                let constraints = super::limit_constraints(&external, id);
                let (limit, _) = effective_limit(physical, &constraints, now.timestamp());
                wit::Node {
                    id: (*id).to_owned(),
                    parent: if *id == GRID_ID {
                        None
                    } else {
                        site.circuit(id).map(|c| c.parent.clone())
                    },
                    limit: wit_lines(limit, grid_lines),
                }
            })
            .collect();

        let (stations, evses) = self.gather(&site, &node_index, now, stale);
        let statuses: Vec<(Option<String>, Option<String>)> = {
            let state = lock(&self.state);
            evses
                .iter()
                .map(|e| {
                    let evse = state
                        .stations
                        .get(&e.key.station)
                        .and_then(|s| s.evses.get(&e.key.evse));
                    (
                        evse.and_then(|v| v.connectors.values().next().cloned()),
                        evse.and_then(|v| v.session.as_ref())
                            .and_then(|s| s.charging_state.clone()),
                    )
                })
                .collect()
        };
        let links = lock(&self.links);
        let evses = evses
            .iter()
            .zip(statuses)
            .map(|(e, (connector, charging))| {
                let s = &stations[e.station];
                let setpoint = links
                    .get(&e.key.station)
                    .and_then(|l| l.evses.get(&e.key.evse))
                    .and_then(|l| l.accepted);
                wit::EvseState {
                    id: e.key.label(),
                    node: s.config.circuit.clone(),
                    status: status(connector.as_deref(), charging.as_deref()),
                    session_active: e.session.is_some(),
                    min_current: s.config.min_current_a,
                    max_current: s.config.max_current_a,
                    setpoint,
                    measured: e
                        .measured_lines
                        .map_or(wit_lines(PerLine::ZERO, [false; 3]), |m| {
                            wit_lines(m, grid_lines)
                        }),
                    session_energy: e.session.as_ref().map(|s| s.energy_wh),
                }
            })
            .collect();
        drop(links);

        let meters = lock(&self.meters)
            .iter()
            .map(|(name, m)| wit::MeterReading {
                meter: name.clone(),
                node: m.node.clone(),
                reading: m.reading,
            })
            .collect();
        let policies = std::sync::Arc::clone(&lock(&self.policies));
        let voltage = site.model().phase_voltage_v();
        let prices = policies
            .prices(now)
            .into_iter()
            .map(|p| wit::PriceSlot {
                start: p.from.timestamp_millis(),
                end: p.until.timestamp_millis(),
                price: p.price,
            })
            .collect();
        let surplus = policies.solar_at(now);
        let solar = if surplus.sum() > 0.0 {
            vec![wit::SolarSlot {
                start: now.timestamp_millis(),
                end: now.timestamp_millis() + config.tick.as_millis() as i64,
                power: surplus.sum() * voltage,
            }]
        } else {
            Vec::new()
        };
        wit::SiteSnapshot {
            now: now.timestamp_millis(),
            time_zone: site.timezone().name().to_owned(),
            nominal_voltage: voltage,
            nodes,
            evses,
            meters,
            prices,
            solar,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_of_both_versions_map_to_the_contract() {
        use wit::EvseStatus as S;
        assert!(matches!(status(Some("Charging"), None), S::Charging));
        assert!(matches!(
            status(Some("Occupied"), Some("SuspendedEV")),
            S::SuspendedEv
        ));
        assert!(matches!(status(Some("Occupied"), None), S::Preparing));
        assert!(matches!(status(Some("Bogus"), None), S::Unknown));
        assert!(matches!(status(None, None), S::Unknown));
    }
}
