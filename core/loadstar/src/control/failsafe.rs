//! The failsafe budget: what every EVSE may draw on its fallback profile alone, when Loadstar or
//! its link is gone. Pure.
//!
//! Per node and line the budget is the limit, minus the building reserve (on the grid node),
//! minus the hardware maximum of every station without a confirmed fallback (they may draw it).
//! The minimum current goes to as many EVSEs as the budget holds, EVSEs with a session first,
//! in an order that rotates, so a long outage does not starve the same cars.

use loadstar_optimizer::model::{PerLine, StationCircuit};

/// One node of the tree (index 0 is the grid connection; parents come first).
#[derive(Debug, Clone)]
pub struct BudgetNode {
    pub parent: Option<usize>,
    pub limit: PerLine,
}

/// One EVSE a fallback can be given to.
#[derive(Debug, Clone)]
pub struct FallbackEvse {
    /// The station's index in [`FallbackInput::stations`].
    pub station: usize,
    pub evse: u32,
    pub min_a: f64,
    pub has_session: bool,
}

/// One station.
#[derive(Debug, Clone)]
pub struct FallbackStation {
    /// The nodes whose limits its current counts against (its circuit up to the grid).
    pub path: Vec<usize>,
    pub circuit: StationCircuit,
    /// Hardware maximum per phase, per EVSE.
    pub max_a: f64,
    pub evses: u32,
    /// Whether its fallback profiles are confirmed (accepted, in a purpose that survives).
    pub confirmed: bool,
}

/// The inputs of [`fallback_budget`].
#[derive(Debug, Clone)]
pub struct FallbackInput {
    pub nodes: Vec<BudgetNode>,
    /// Kept free on the grid node for the building's own load, A per line.
    pub building_reserve: PerLine,
    /// Counted on the grid node for stations the site file does not know (they are held by a
    /// profile, but unconfirmed), A per line.
    pub unknown_load: PerLine,
    pub stations: Vec<FallbackStation>,
    pub evses: Vec<FallbackEvse>,
    /// Rotates the order in which EVSEs get the minimum.
    pub rotation: usize,
}

/// The fallback current of each EVSE of [`FallbackInput::evses`] (0 or its minimum), in order.
pub fn fallback_budget(input: &FallbackInput) -> Vec<f64> {
    let mut left: Vec<PerLine> = input.nodes.iter().map(|n| n.limit).collect();
    if let Some(grid) = left.first_mut() {
        *grid -= input.building_reserve + input.unknown_load;
    }
    for s in input.stations.iter().filter(|s| !s.confirmed) {
        let load = s.circuit.line_load(0, s.max_a * f64::from(s.evses.max(1)));
        for &n in &s.path {
            if let Some(l) = left.get_mut(n) {
                *l -= load;
            }
        }
    }
    // Sessions first, then the rotation within each group.
    let n = input.evses.len();
    let mut order: Vec<usize> = (0..n).collect();
    if n > 0 {
        order.rotate_left(input.rotation % n);
    }
    order.sort_by_key(|&i| !input.evses[i].has_session);
    let mut out = vec![0.0; n];
    for i in order {
        let e = &input.evses[i];
        let Some(station) = input.stations.get(e.station) else {
            continue;
        };
        if !(station.confirmed && e.min_a.is_finite() && e.min_a > 0.0) {
            continue;
        }
        let load = station.circuit.line_load(0, e.min_a);
        let fits = station.path.iter().all(|&n| {
            left.get(n)
                .is_some_and(|l| (*l - load).iter().all(|(_, v)| v >= 0.0))
        });
        if fits {
            for &n in &station.path {
                left[n] -= load;
            }
            out[i] = e.min_a;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadstar_optimizer::model::{ElectricalModel, GridType, Line, StationWiring};

    fn circuit() -> StationCircuit {
        let model = ElectricalModel::new(GridType::Wye, 230.0).expect("model");
        StationCircuit::new(
            model,
            StationWiring::three_phase([Line::L1, Line::L2, Line::L3]),
        )
        .expect("circuit")
    }

    fn input(limit: f64, stations: usize, confirmed: bool) -> FallbackInput {
        FallbackInput {
            nodes: vec![BudgetNode {
                parent: None,
                limit: PerLine::splat(limit),
            }],
            building_reserve: PerLine::splat(10.0),
            unknown_load: PerLine::ZERO,
            stations: (0..stations)
                .map(|_| FallbackStation {
                    path: vec![0],
                    circuit: circuit(),
                    max_a: 32.0,
                    evses: 1,
                    confirmed,
                })
                .collect(),
            evses: (0..stations)
                .map(|s| FallbackEvse {
                    station: s,
                    evse: 1,
                    min_a: 6.0,
                    has_session: true,
                })
                .collect(),
            rotation: 0,
        }
    }

    #[test]
    fn minimum_goes_to_as_many_as_fit_after_the_reserve() {
        // 40 A - 10 A reserve = 30 A: five EVSEs at 6 A, the sixth gets nothing.
        let out = fallback_budget(&input(40.0, 6, true));
        assert_eq!(out.iter().filter(|&&a| a == 6.0).count(), 5);
        assert_eq!(out.iter().filter(|&&a| a == 0.0).count(), 1);
    }

    #[test]
    fn unconfirmed_stations_count_at_their_hardware_max() {
        let mut i = input(80.0, 4, true);
        i.stations[0].confirmed = false;
        // 80 - 10 - 32 = 38 A left: the three confirmed EVSEs get 6 A; the unconfirmed one is
        // never given a fallback.
        let out = fallback_budget(&i);
        assert_eq!(out, vec![0.0, 6.0, 6.0, 6.0]);
        i.stations[1].confirmed = false;
        i.stations[2].confirmed = false;
        // 80 - 10 - 96 < 0: nobody.
        assert_eq!(fallback_budget(&i), vec![0.0; 4]);
    }

    #[test]
    fn rotation_changes_who_keeps_the_minimum_and_sessions_come_first() {
        let mut i = input(22.0, 3, true); // 12 A: two of three.
        let a = fallback_budget(&i);
        i.rotation = 1;
        let b = fallback_budget(&i);
        assert_ne!(a, b);
        assert_eq!(a.iter().filter(|&&x| x > 0.0).count(), 2);
        i.evses[0].has_session = false;
        i.rotation = 0;
        let c = fallback_budget(&i);
        assert_eq!(c[0], 0.0, "the EVSE without a session comes last");
    }
}
