//! A meter plugin's reading as the controller's quantity: signed current per grid line.

use loadstar_optimizer::model::{ElectricalModel, Line, PerLine};

use super::wit;

/// Why a reading gives no current for the site's lines.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadingError {
    /// Neither a current, a line power nor a total power covers these lines.
    #[error("the reading has no current, line power or total power for {}", fmt_lines(.lines))]
    Incomplete { lines: Vec<Line> },
}

fn fmt_lines(lines: &[Line]) -> String {
    lines
        .iter()
        .map(Line::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The reading as signed amps per line (import positive), for the lines of `model`'s grid
/// (others stay 0). Per line, in order:
/// 1. the measured current;
/// 2. on grids with a neutral, the line's power over its measured voltage (the nominal
///    line-to-neutral voltage when none is measured);
///
/// and when that leaves a line unknown, the worst case the total power (else the sum of the line
/// powers) allows on it: all of an import on that one line (the total over the phase voltage;
/// on delta the line-to-line voltage, a line-to-line load), and no credit for an export. A
/// measured line is never replaced: the control loop must not see less load than there is.
/// Non-finite values and non-positive voltages count as absent (the host already refuses
/// non-finite readings).
pub fn line_currents(
    reading: &wit::Reading,
    model: &ElectricalModel,
) -> Result<PerLine, ReadingError> {
    let grid = model.grid();
    let get = |p: &wit::PerLine, line: Line| {
        match line {
            Line::L1 => p.l1,
            Line::L2 => p.l2,
            Line::L3 => p.l3,
        }
        .filter(|v| v.is_finite())
    };
    let mut amps = PerLine::ZERO;
    let mut missing = Vec::new();
    for &line in grid.lines() {
        let from_power = || {
            let nominal = model.neutral_voltage_v()?;
            let volts = get(&reading.voltage, line)
                .filter(|v| *v > 0.0)
                .unwrap_or(nominal);
            get(&reading.power, line).map(|w| w / volts)
        };
        match get(&reading.current, line).or_else(from_power) {
            Some(a) => amps[line] = a,
            None => missing.push(line),
        }
    }
    if missing.is_empty() {
        return Ok(amps);
    }
    let line_powers: Vec<f64> = grid
        .lines()
        .iter()
        .filter_map(|&l| get(&reading.power, l))
        .collect();
    let total = reading
        .total_power
        .filter(|w| w.is_finite())
        .or_else(|| (line_powers.len() == grid.lines().len()).then(|| line_powers.iter().sum()));
    match total {
        Some(watts) => {
            let worst = (watts / model.phase_voltage_v()).max(0.0);
            for line in missing {
                amps[line] = worst;
            }
            Ok(amps)
        }
        None => Err(ReadingError::Incomplete { lines: missing }),
    }
}

#[cfg(test)]
mod tests {
    use loadstar_optimizer::model::GridType;

    use super::*;

    fn lines(l1: Option<f64>, l2: Option<f64>, l3: Option<f64>) -> wit::PerLine {
        wit::PerLine { l1, l2, l3 }
    }

    fn none() -> wit::PerLine {
        lines(None, None, None)
    }

    fn reading() -> wit::Reading {
        wit::Reading {
            timestamp: None,
            current: none(),
            voltage: none(),
            power: none(),
            total_power: None,
            energy_import: None,
            energy_export: None,
        }
    }

    fn close(a: PerLine, b: PerLine) -> bool {
        a.0.iter().zip(b.0).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    const WYE: ElectricalModel = ElectricalModel::WYE_230_400;

    #[test]
    fn measured_currents_are_taken_as_they_are_signed() {
        let mut r = reading();
        r.current = lines(Some(10.0), Some(-2.5), Some(0.0));
        r.total_power = Some(99_999.0);
        assert_eq!(line_currents(&r, &WYE), Ok(PerLine::new(10.0, -2.5, 0.0)));
        // Split-phase has no L3: whatever the meter says there is not a line of the site.
        r.current.l3 = Some(7.0);
        let split = ElectricalModel::SPLIT_PHASE_120_240;
        assert_eq!(line_currents(&r, &split), Ok(PerLine::new(10.0, -2.5, 0.0)));
    }

    #[test]
    fn line_power_over_the_measured_or_nominal_voltage() {
        let mut r = reading();
        r.power = lines(Some(2300.0), Some(-1150.0), Some(460.0));
        r.voltage = lines(Some(230.0), Some(0.0), None);
        // L1 at its measured 230 V; L2's 0 V and L3's missing voltage fall back to 230 V.
        assert!(close(
            line_currents(&r, &WYE).expect("currents"),
            PerLine::new(10.0, -5.0, 2.0)
        ));
        r.voltage.l1 = Some(200.0);
        assert!(close(
            line_currents(&r, &WYE).expect("currents"),
            PerLine::new(11.5, -5.0, 2.0)
        ));
        // A current beats the power on its line.
        r.current.l2 = Some(-4.0);
        assert!(close(
            line_currents(&r, &WYE).expect("currents"),
            PerLine::new(11.5, -4.0, 2.0)
        ));
    }

    #[test]
    fn a_total_power_is_the_worst_case_on_each_unknown_line() {
        let mut r = reading();
        r.total_power = Some(6900.0);
        // All of it could be on any one line.
        assert!(close(
            line_currents(&r, &WYE).expect("wye"),
            PerLine::splat(30.0)
        ));
        let delta = ElectricalModel::DELTA_IT_230;
        assert!(close(
            line_currents(&r, &delta).expect("delta"),
            PerLine::splat(30.0)
        ));
        // An export earns no credit; split-phase has no L3.
        r.total_power = Some(-4800.0);
        let split = ElectricalModel::new(GridType::SplitPhase, 120.0).expect("model");
        assert!(close(
            line_currents(&r, &split).expect("split"),
            PerLine::ZERO
        ));
        // A measured line keeps its value; only the unknown ones take the worst case.
        r.total_power = Some(6900.0);
        r.current.l1 = Some(12.0);
        assert!(close(
            line_currents(&r, &WYE).expect("wye"),
            PerLine::new(12.0, 30.0, 30.0)
        ));
    }

    #[test]
    fn delta_line_powers_add_up_to_the_worst_case_per_line() {
        // No neutral: a line's power has no voltage of its own to divide by.
        let mut r = reading();
        r.power = lines(Some(1000.0), Some(2000.0), Some(3000.0));
        let delta = ElectricalModel::DELTA_IT_230;
        assert!(close(
            line_currents(&r, &delta).expect("delta"),
            PerLine::splat(6000.0 / 230.0)
        ));
    }

    #[test]
    fn a_reading_without_current_or_power_names_the_lines() {
        let mut r = reading();
        r.energy_import = Some(1.0);
        r.current.l2 = Some(3.0);
        r.power.l3 = Some(f64::NAN);
        let err = line_currents(&r, &WYE).expect_err("incomplete");
        assert_eq!(
            err,
            ReadingError::Incomplete {
                lines: vec![Line::L1, Line::L3]
            }
        );
        assert_eq!(
            err.to_string(),
            "the reading has no current, line power or total power for L1, L3"
        );
    }
}
