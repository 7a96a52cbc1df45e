//! `cargo bench -p loadstar-optimizer --bench quality`: what allocate() delivers on the
//! allocate bench's problems, against the static equal-share and first-come-first-served
//! baselines on the same inputs. Prints a table (no timing): total power, EVSEs charging and
//! Jain's fairness index over the setpoints. The baselines know no weights, so every weight is
//! set to 1 here.

use loadstar_optimizer::allocate::allocate;
use loadstar_optimizer::policy::{equal_share, first_come_first_served, jain_index};

mod common;
use common::problem;

fn main() {
    println!("| EVSEs | policy | total kW | charging | Jain's index |");
    println!("|---|---|---|---|---|");
    for n in [10usize, 100, 1_000, 10_000] {
        let mut p = problem(n);
        for e in &mut p.evses {
            e.weight = 1.0;
        }
        let Ok(alloc) = allocate(&p) else {
            eprintln!("allocate() rejected the {n}-EVSE problem");
            std::process::exit(1);
        };
        let ours: Vec<f64> = alloc.setpoints.iter().map(|s| s.amps).collect();
        for (name, amps) in [
            ("allocate", ours),
            ("equal share", equal_share(&p)),
            ("first come, first served", first_come_first_served(&p)),
        ] {
            let kw: f64 = p
                .evses
                .iter()
                .zip(&amps)
                .map(|(e, &a)| e.circuit.amps_to_kw(e.ev_phases, a))
                .sum();
            let charging = amps.iter().filter(|&&a| a > 0.0).count();
            println!(
                "| {n} | {name} | {kw:.1} | {charging} | {:.3} |",
                jain_index(&amps)
            );
        }
    }
}
