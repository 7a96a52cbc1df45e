//! Drives a scenario [`Plan`] through simulated stations connected to a CSMS: cars arrive and
//! leave on schedule, faults strike, the site's grid meter follows the stations' draw and is
//! published (for the meter devices of [`crate::meter`]), and the KPIs accumulate at the sims'
//! resolution.
//!
//! Time is tokio's: in real time against a running Loadstar (binary `loadstar-sim`), or under
//! paused virtual time with in-memory pipes. The controller is whatever CSMS the stations dial;
//! this module never decides a limit itself.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use loadstar_optimizer::model::PerLine;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;

use crate::client::ClientError;
use crate::kpi::{Accumulator, Kpis, Sample, StationDraw, VehicleOutcome};
use crate::plot::SitePoint;
use crate::scenario::Plan;
use crate::site::{GridMeter, MeterReading};
use crate::station::{Command, SimClock, StationConfig, StationHandle, StationSim, spawn};

/// How to drive.
#[derive(Debug, Clone)]
pub struct DriveConfig {
    /// Sampling resolution of the site and the KPIs.
    pub tick: Duration,
    /// The controller's period, for the KPIs' reaction-lag allowance.
    pub control_tick: Duration,
    /// Stop early (e.g. a short real-time run); `None` runs the whole plan.
    pub until: Option<DateTime<Utc>>,
    /// Per visit (in [`Plan::visits`] order): whether its target was feasible, from the
    /// offline optimum (`baseline::offline_optimum`), so "reached target" counts the same
    /// vehicles as the baselines' rows. Empty or `None`: unknown, counted.
    pub feasible: Vec<Option<bool>>,
}

impl Default for DriveConfig {
    fn default() -> Self {
        DriveConfig {
            tick: Duration::from_secs(1),
            control_tick: Duration::from_secs(5),
            until: None,
            feasible: Vec::new(),
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Report {
    pub kpis: Kpis,
    /// The site series for [`crate::plot::site_current_svg`], one point per tick.
    pub site: Vec<SitePoint>,
    /// (id tag, delivered kWh, requested kWh) per visit, for [`crate::plot::vehicle_energy_svg`].
    pub vehicles: Vec<(String, f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Happening {
    // Order within one instant: leave before arriving (an EVSE turned over), faults last.
    Depart(usize),
    Arrive(usize),
    Fault(usize, usize),
}

/// Runs `plan` from now to its end (or `config.until`). `dial` makes the dialer for each
/// station. `meter` receives the grid meter at every tick.
pub async fn run<S, D, F>(
    plan: &Plan,
    mut dial: impl FnMut(&StationConfig) -> D,
    clock: SimClock,
    meter: &watch::Sender<MeterReading>,
    config: DriveConfig,
) -> Report
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    D: FnMut() -> F + Send + 'static,
    F: Future<Output = Result<WebSocketStream<S>, ClientError>> + Send,
{
    let stations: Vec<StationHandle> = plan
        .stations
        .iter()
        .filter_map(|p| match StationSim::new(p.config.clone(), clock.now()) {
            Ok(sim) => Some(spawn(sim, dial(&p.config), clock)),
            Err(e) => {
                tracing::warn!(station = %p.config.id, %e, "station not simulated");
                None
            }
        })
        .collect();
    // A run that starts part-way through the plan skips what is already over; a car that is
    // already there arrives at the first tick.
    let begin = clock.now();
    let mut schedule: Vec<(DateTime<Utc>, Happening)> = Vec::new();
    for (i, v) in plan.visits.iter().enumerate() {
        if v.depart > begin {
            schedule.push((v.arrive, Happening::Arrive(i)));
            schedule.push((v.depart, Happening::Depart(i)));
        }
    }
    for (s, p) in plan.stations.iter().enumerate() {
        for (k, (offset, _)) in p.faults.iter().enumerate() {
            let at = plan.start + chrono::Duration::seconds(i64::from(*offset));
            if at >= begin {
                schedule.push((at, Happening::Fault(s, k)));
            }
        }
    }
    schedule.sort();
    let mut next = 0;

    let end = config.until.map_or(plan.end, |u| u.min(plan.end));
    let mut grid_meter = GridMeter::new(plan.site.model);
    let mut kpis = Accumulator::new(plan.site.model, config.control_tick, plan.tariff.clone());
    let mut delivered = vec![0.0; plan.visits.len()];
    let mut site_points = Vec::new();
    let mut ticker = tokio::time::interval(config.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dt = config.tick.as_secs_f64();
    let mut draws = Vec::new();
    loop {
        ticker.tick().await;
        let now = clock.now();
        if now >= end {
            break;
        }
        while let Some(&(at, happening)) = schedule.get(next) {
            if at > now {
                break;
            }
            next += 1;
            let (station, command) = match happening {
                Happening::Arrive(i) => {
                    let v = &plan.visits[i];
                    (
                        v.station,
                        Command::PlugIn {
                            evse: v.evse,
                            spec: v.ev.clone(),
                            id_tag: v.id_tag.clone(),
                        },
                    )
                }
                Happening::Depart(i) => {
                    let v = &plan.visits[i];
                    // What the car took by departure, read before it leaves.
                    if let Some(handle) = stations.get(v.station)
                        && let Some(e) = handle.snapshot.borrow().evses.get(v.evse as usize - 1)
                    {
                        delivered[i] = e.delivered_wh.unwrap_or(0.0);
                    }
                    (v.station, Command::Unplug { evse: v.evse })
                }
                Happening::Fault(s, k) => (s, Command::Fault(plan.stations[s].faults[k].1)),
            };
            if let Some(handle) = stations.get(station)
                && handle.commands.send(command).await.is_err()
            {
                tracing::warn!(station, "station task gone");
            }
        }

        draws.clear();
        let mut evs = PerLine::ZERO;
        for (s, handle) in stations.iter().enumerate() {
            let circuit = plan.stations[s].config.circuit;
            let snapshot = handle.snapshot.borrow();
            let mut draw = PerLine::ZERO;
            let mut commanded = PerLine::ZERO;
            for e in &snapshot.evses {
                draw += circuit.line_load(e.phases, e.measured_amps);
                commanded += circuit.line_load(e.phases, e.commanded_amps);
            }
            evs += draw;
            draws.push(StationDraw {
                station: s,
                draw,
                commanded,
            });
        }
        let site = &plan.site;
        let grid = site.grid_amps(now, evs);
        grid_meter.update(now, grid);
        meter.send_replace(grid_meter.reading());
        let limit = site.limit_at(now);
        let announced = site
            .limit_changes
            .iter()
            .filter(|c| c.at <= now)
            .max_by_key(|c| c.at)
            .is_none_or(|c| c.announced);
        kpis.push(
            &Sample {
                at: now,
                limit,
                limit_announced: announced,
                grid,
                uncontrolled: site.base_amps(now) - site.pv_amps(now),
                pv_w: site.pv.as_ref().map_or(0.0, |pv| pv.watts(now)),
                stations: &draws,
            },
            dt,
        );
        site_points.push(SitePoint {
            at: now,
            grid,
            limit,
        });
    }

    // Cars still plugged in at the end count with what they have.
    for (i, v) in plan.visits.iter().enumerate() {
        if v.depart >= end
            && v.arrive < end
            && let Some(handle) = stations.get(v.station)
            && let Some(e) = handle.snapshot.borrow().evses.get(v.evse as usize - 1)
        {
            delivered[i] = e.delivered_wh.unwrap_or(0.0);
        }
    }
    let profiles: Vec<u32> = stations
        .iter()
        .map(|h| h.snapshot.borrow().profiles_received)
        .collect();
    let mut tasks = Vec::new();
    for handle in stations {
        drop(handle.commands);
        tasks.push(handle.task);
    }
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }

    // Only the visits this run saw: a short run does not owe the cars of the rest of the day.
    let seen: Vec<usize> = (0..plan.visits.len())
        .filter(|&i| plan.visits[i].arrive < end && plan.visits[i].depart > begin)
        .collect();
    let outcomes: Vec<VehicleOutcome> = seen
        .iter()
        .map(|&i| VehicleOutcome {
            requested_wh: plan.visits[i].ev.requested_wh(),
            delivered_wh: delivered[i],
            feasible: config.feasible.get(i).copied().flatten(),
        })
        .collect();
    let vehicles = seen
        .iter()
        .zip(&outcomes)
        .map(|(&i, o)| {
            (
                plan.visits[i].id_tag.clone(),
                o.delivered_wh / 1000.0,
                o.requested_wh / 1000.0,
            )
        })
        .collect();
    Report {
        kpis: kpis.finish(&outcomes, &profiles),
        site: site_points,
        vehicles,
    }
}
