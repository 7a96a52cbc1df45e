//! The site file: examples, every validation rule (with its line), secrets, credentials and the
//! derived circuit tree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use loadstar::csms::{Admission, StationDirectory};
use loadstar::site::{
    AuthorizationMode, ConfigError, ConfigErrors, CredentialSource, DEMO_SITE, GRID_ID, LogFormat,
    SiteConfig, StationCredentials, check,
};
use loadstar_ocpp::OcppVersion;
use loadstar_optimizer::model::{GridType, Line, PerLine, PhaseConnection, SQRT_3, StationWiring};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const PW: &str = "0123456789abcdef";

/// A valid site. Line numbers matter to the tests below:
///  1 [site] / 3 timezone / 5 [grid] / 6 type / 7 voltage / 8 limit_a
/// 10 [[circuit]] / 11 id feeder-a / 12 limit_a 40
/// 14 [[circuit]] / 15 id feeder-b / 16 parent / 17 limit_a 32
/// 19 [[station]] / 20 id CP-01 / 21 circuit / 22 phases / 23 max_current_a / 24 password
const BASE: &str = r#"[site]
name = "Test"
timezone = "Europe/Berlin"

[grid]
type = "wye"
voltage = 230.0
limit_a = 63.0

[[circuit]]
id = "feeder-a"
limit_a = 40.0

[[circuit]]
id = "feeder-b"
parent = "feeder-a"
limit_a = 32.0

[[station]]
id = "CP-01"
circuit = "feeder-a"
phases = 3
max_current_a = 32.0
password = "0123456789abcdef"
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<SiteConfig, ConfigErrors> {
    SiteConfig::parse(text, Path::new("/srv/site"), &no_env)
}

fn ok(text: &str) -> SiteConfig {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid site, got:\n{e}\n--- text ---\n{text}"),
    }
}

fn errs(text: &str) -> ConfigErrors {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e,
    }
}

/// `BASE` with `from` replaced by `to` (which must occur).
fn base_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    BASE.replacen(from, to, 1)
}

/// 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    text[..at].matches('\n').count() + 1
}

/// The single error whose field is `field`; panics with all errors otherwise.
fn find<'a>(e: &'a ConfigErrors, field: &str) -> &'a ConfigError {
    let hits: Vec<&ConfigError> = e.errors.iter().filter(|x| x.field == field).collect();
    assert_eq!(hits.len(), 1, "want one error on {field:?}, got:\n{e}");
    hits[0]
}

/// Asserts an error on `field` at `line` whose message contains `msg`.
fn assert_err(e: &ConfigErrors, field: &str, line: usize, msg: &str) {
    let x = find(e, field);
    assert_eq!(x.line, Some(line), "line of {field}: {x}\nall:\n{e}");
    assert!(
        x.message.contains(msg),
        "message of {field} should contain {msg:?}: {x}"
    );
}

fn station_block(body: &str) -> String {
    format!("\n[[station]]\n{body}\npassword = \"{PW}\"\n")
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn example(name: &str) -> String {
    std::fs::read_to_string(examples_dir().join(name)).unwrap()
}

fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

// ---------------------------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------------------------

/// examples/site.toml, copied next to its password file, with its environment variables set.
fn load_site_example(dir: &Path) -> SiteConfig {
    let path = dir.join("site.toml");
    std::fs::write(&path, example("site.toml")).unwrap();
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::write(
        dir.join("secrets/CP-06.password"),
        "cp06-from-a-file-0001\n",
    )
    .unwrap();
    let env: HashMap<String, String> = (1..=5)
        .map(|i| {
            (
                format!("LOADSTAR_PW_CP0{i}"),
                format!("cp0{i}-from-the-env-0001"),
            )
        })
        .collect();
    let lookup = |k: &str| env.get(k).cloned();
    SiteConfig::parse(&std::fs::read_to_string(&path).unwrap(), dir, &lookup)
        .unwrap_or_else(|e| panic!("examples/site.toml:\n{e}"))
}

#[test]
fn example_site_parses_and_derives_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let site = load_site_example(dir.path());
    assert!(site.warnings().is_empty(), "{:?}", site.warnings());
    assert_eq!(site.site().name, "Depot North");
    assert_eq!(site.timezone(), chrono_tz::Europe::Berlin);
    assert_eq!(site.model().grid(), GridType::Wye);

    // 63 A vs 40 kW: 40 000 / (3 · 230) = 57.971 A per line is tighter.
    let kw_amps: f64 = 40_000.0 / (3.0 * 230.0);
    assert!((kw_amps - 57.97).abs() < 0.01);
    assert!(approx(site.grid_limit().0[0], kw_amps));
    assert_eq!(site.grid().limit_a, PerLine::splat(63.0));

    // Tree.
    assert_eq!(site.circuits().len(), 2);
    assert_eq!(site.circuits()[0].id, "feeder-a", "top-down order");
    let b = site.circuit("feeder-b").unwrap();
    assert_eq!(b.parent, "feeder-a");
    assert_eq!(b.ancestors, vec!["feeder-a", GRID_ID]);
    assert_eq!(b.limit_a, PerLine::new(32.0, 32.0, 25.0));
    assert_eq!(b.effective_limit, PerLine::new(32.0, 32.0, 25.0));
    assert_eq!(b.stations, vec!["CP-03", "CP-04", "CP-05"]);
    let a = site.circuit("feeder-a").unwrap();
    assert_eq!(a.children, vec!["feeder-b"]);
    assert_eq!(a.stations, vec!["CP-01", "CP-02"]);
    assert_eq!(site.children(GRID_ID).unwrap(), ["feeder-a"]);
    assert_eq!(site.stations_on(GRID_ID).unwrap(), ["CP-06"]);
    assert_eq!(site.node_limit("feeder-a"), Some(PerLine::splat(40.0)));
    assert!(site.node_limit("nope").is_none());

    // Stations.
    assert_eq!(site.stations().len(), 6);
    let cp1 = site.station("CP-01").unwrap();
    assert_eq!(
        cp1.wiring,
        StationWiring::three_phase([Line::L2, Line::L3, Line::L1])
    );
    assert_eq!(cp1.circuit_path, vec!["feeder-a", GRID_ID]);
    assert_eq!(cp1.ocpp, Some(OcppVersion::V16));
    // A 1-phase EV on the rotated station loads L2.
    assert_eq!(
        cp1.electrical.line_load(1, 16.0),
        PerLine::new(0.0, 16.0, 0.0)
    );
    let cp2 = site.station("CP-02").unwrap();
    assert_eq!(cp2.evses, 2);
    assert_eq!(cp2.wiring, StationWiring::three_phase(Line::ALL));
    let cp3 = site.station("CP-03").unwrap();
    assert_eq!(cp3.wiring, StationWiring::single_phase(Line::L2));
    assert_eq!(cp3.circuit_path, vec!["feeder-b", "feeder-a", GRID_ID]);
    let cp5 = site.station("CP-05").unwrap();
    assert_eq!(cp5.security_profile, 2);
    assert_eq!(cp5.min_current_a, 8.0);
    assert_eq!(site.station("CP-04").unwrap().min_current_a, 6.0);
    let cp6 = site.station("CP-06").unwrap();
    assert_eq!(cp6.circuit, GRID_ID);
    assert_eq!(cp6.circuit_path, vec![GRID_ID]);
    assert!(site.station("CP-07").is_none());

    // Secrets from env and file.
    assert!(
        cp1.credentials
            .as_ref()
            .unwrap()
            .verify("cp01-from-the-env-0001")
    );
    assert!(
        !cp1.credentials
            .as_ref()
            .unwrap()
            .verify("cp02-from-the-env-0001")
    );
    assert_eq!(
        cp1.credential_source,
        Some(CredentialSource::Env("LOADSTAR_PW_CP01".into()))
    );
    assert!(
        cp6.credentials
            .as_ref()
            .unwrap()
            .verify("cp06-from-a-file-0001")
    );
    assert_eq!(
        cp6.credential_source,
        Some(CredentialSource::File(
            dir.path().join("secrets/CP-06.password")
        ))
    );

    // Other sections.
    assert_eq!(site.csms().listen.to_string(), "0.0.0.0:9000");
    assert_eq!(site.csms().meter_interval_s, 10);
    assert!(site.csms().require_auth);
    assert_eq!(site.authorization().mode, AuthorizationMode::LocalList);
    assert!(site.authorization().accepts("04A1B2C3"));
    assert!(!site.authorization().accepts("DEADBEEF"));
    assert_eq!(site.store().data_dir, dir.path().join("data"));
    assert_eq!(site.api().listen.to_string(), "127.0.0.1:8080");
    assert_eq!(site.logging().format, LogFormat::Text);

    let summary = site.summary();
    assert!(
        summary.contains("circuit feeder-b: L1 32 / L2 32 / L3 25 A"),
        "{summary}"
    );
    assert!(
        summary.contains("station CP-01: 3-phase L2,L3,L1"),
        "{summary}"
    );
}

#[test]
fn example_delta_it_parses() {
    let env = |k: &str| {
        k.starts_with("LOADSTAR_PW_SOL")
            .then(|| format!("{k}-secret"))
    };
    let site = SiteConfig::parse(&example("delta-it.toml"), &examples_dir(), &env)
        .unwrap_or_else(|e| panic!("examples/delta-it.toml:\n{e}"));
    assert!(site.warnings().is_empty(), "{:?}", site.warnings());
    assert_eq!(site.model().grid(), GridType::Delta);
    assert_eq!(site.timezone(), chrono_tz::Europe::Oslo);
    // 35 kW on a 230 V delta: 35 000 / (√3 · 230) = 87.86 A < 100 A.
    let kw_amps = 35_000.0 / (SQRT_3 * 230.0);
    assert!((kw_amps - 87.86).abs() < 0.01);
    assert!(approx(site.grid_limit().0[2], kw_amps));
    let sol1 = site.station("SOL-01").unwrap();
    assert_eq!(
        sol1.wiring,
        StationWiring::SinglePhase(PhaseConnection::LineToLine(Line::L1, Line::L2))
    );
    // A line-to-line charger loads both lines.
    assert_eq!(
        sol1.electrical.line_load(1, 32.0),
        PerLine::new(32.0, 32.0, 0.0)
    );
    assert_eq!(
        site.station("SOL-03").unwrap().wiring,
        StationWiring::single_phase_line_to_line(Line::L3, Line::L1)
    );
    // Default single-phase wiring on delta is L1-L2.
    assert_eq!(
        site.station("SOL-05").unwrap().wiring,
        StationWiring::single_phase_line_to_line(Line::L1, Line::L2)
    );
    assert_eq!(
        site.circuit("row-east").unwrap().ancestors,
        vec!["garage", GRID_ID]
    );
    assert_eq!(site.store().data_dir, PathBuf::from("/var/lib/loadstar"));
    assert_eq!(site.authorization().mode, AuthorizationMode::AcceptAll);
}

#[test]
fn readme_split_phase_example_parses() {
    let readme = example("README.md");
    let start = readme.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let env = |_: &str| Some("a-long-enough-password".to_string());
    let site = SiteConfig::parse(block, Path::new("."), &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(site.warnings().is_empty(), "{:?}", site.warnings());
    let s240 = site.station("garage-240").unwrap();
    assert_eq!(
        s240.electrical.line_load(1, 40.0),
        PerLine::new(40.0, 40.0, 0.0)
    );
    assert!(approx(s240.electrical.amps_to_watts(1, 40.0), 9600.0));
    let s120 = site.station("driveway-120").unwrap();
    assert!(approx(s120.electrical.amps_to_watts(1, 12.0), 1440.0));
}

#[test]
fn readme_error_examples_match_the_messages() {
    let text = base_with("limit_a = 32.0", "limit_a = [50, 32, 32]")
        + &station_block("id = \"CP-08\"\nphases = 1\nmax_curent_a = 16");
    let e = errs(&text);
    let readme = example("README.md");
    let typo = find(&e, "station \"CP-08\".max_curent_a");
    let shown = typo.to_string();
    assert!(
        readme.contains(&shown[shown.find("station").unwrap()..]),
        "{shown}"
    );
    let warning = e.warnings[0].to_string();
    assert!(
        readme.contains(&warning[warning.find("circuit").unwrap()..]),
        "{warning}"
    );
}

#[test]
fn demo_site_is_valid_and_self_contained() {
    assert!(DEMO_SITE.contains("DEMO ONLY"));
    let dir = tempfile::tempdir().unwrap();
    let site = SiteConfig::demo(dir.path());
    assert!(site.warnings().is_empty(), "{:?}", site.warnings());
    assert_eq!(site.stations().len(), 6);
    assert_eq!(site.store().data_dir, dir.path().join("demo-data"));
    let cp = site.station("CP-03").unwrap();
    assert!(
        cp.credentials
            .as_ref()
            .unwrap()
            .verify("demo-password-CP-03")
    );
    assert_eq!(cp.credential_source, Some(CredentialSource::Inline));
}

#[test]
fn load_reads_a_file_and_check_reports() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    std::fs::write(&path, BASE).unwrap();
    let site = SiteConfig::load(&path).unwrap();
    assert_eq!(site.store().data_dir, dir.path().join("data"));
    let report = check(&path);
    assert!(report.is_ok());
    assert!(report.to_string().ends_with(": OK"), "{report}");

    let missing = SiteConfig::load(&dir.path().join("nope.toml")).unwrap_err();
    assert_eq!(missing.len(), 1);
    assert!(missing.errors[0].message.contains("cannot read"));
    assert!(!check(&dir.path().join("nope.toml")).is_ok());
}

#[test]
fn error_display_names_file_line_column_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    let text = format!(
        "{BASE}{}",
        station_block("id = \"CP-07\"\ncircuit = \"feeder-x\"\nphases = 1\nmax_current_a = 16")
    );
    std::fs::write(&path, &text).unwrap();
    let e = SiteConfig::load(&path).unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    // Line 28: the station block starts with a blank line after BASE's 24 lines.
    assert_eq!(line_of(&text, "feeder-x"), 28);
    assert_eq!(
        e.errors[0].to_string(),
        format!(
            "{}:28:11: station \"CP-07\".circuit: circuit \"feeder-x\" is not defined (known: \
             grid, feeder-a, feeder-b)",
            path.display()
        )
    );
    let shown = check(&path).to_string();
    assert!(shown.ends_with("1 error"), "{shown}");
}

// ---------------------------------------------------------------------------------------------
// Grid
// ---------------------------------------------------------------------------------------------

#[test]
fn limit_kw_converts_through_the_model() {
    let site = ok(&base_with(
        "limit_a = 63.0",
        "limit_a = 63.0\nlimit_kw = 40.0",
    ));
    let hand = 40_000.0 / (3.0 * 230.0); // 57.97 A
    assert_eq!(site.grid().limit_kw, Some(40.0));
    assert_eq!(site.grid().limit_a, PerLine::splat(63.0));
    for (_, a) in site.grid_limit().iter() {
        assert!(approx(a, hand), "{a} vs {hand}");
    }
    // The tighter of the two: 100 kW is looser than 63 A.
    let site = ok(&base_with(
        "limit_a = 63.0",
        "limit_a = 63.0\nlimit_kw = 100",
    ));
    assert_eq!(site.grid_limit(), PerLine::splat(63.0));
    // Effective limits below the grid follow the tighter grid limit.
    let site = ok(&base_with(
        "limit_a = 63.0",
        "limit_a = 63.0\nlimit_kw = 20.0",
    ));
    let grid_amps = 20_000.0 / 690.0;
    assert!(approx(
        site.circuit("feeder-b").unwrap().effective_limit.0[1],
        grid_amps
    ));
}

#[test]
fn missing_and_invalid_timezone() {
    let e = errs(&base_with("timezone = \"Europe/Berlin\"\n", ""));
    assert_err(&e, "site.timezone", 1, "missing required key `timezone`");

    let e = errs(&base_with("Europe/Berlin", "Europe/Berln"));
    assert_err(&e, "site.timezone", 3, "unknown time zone \"Europe/Berln\"");

    let e = errs(&base_with("Europe/Berlin", "europe/berlin"));
    assert_err(&e, "site.timezone", 3, "did you mean \"Europe/Berlin\"?");

    let e = errs(&BASE.replace(
        "[site]\nname = \"Test\"\ntimezone = \"Europe/Berlin\"\n",
        "",
    ));
    let x = find(&e, "site");
    assert_eq!(x.line, None);
}

#[test]
fn invalid_grid_type() {
    let e = errs(&base_with("type = \"wye\"", "type = \"star\""));
    assert_err(&e, "grid.type", 6, "unknown grid type \"star\"");
    let e = errs(&base_with("type = \"wye\"", "type = \"split-phase\""));
    assert_err(&e, "grid.type", 6, "did you mean \"split_phase\"?");
    let e = errs(&base_with("type = \"wye\"\n", ""));
    assert_err(&e, "grid.type", 5, "missing required key `type`");
}

#[test]
fn invalid_voltage() {
    for bad in ["0.0", "-230", "nan", "inf"] {
        let e = errs(&base_with("voltage = 230.0", &format!("voltage = {bad}")));
        assert_err(
            &e,
            "grid.voltage",
            7,
            "voltage must be finite and greater than 0 V",
        );
    }
    let e = errs(&base_with("voltage = 230.0", "voltage = \"230\""));
    assert_err(
        &e,
        "grid.voltage",
        7,
        "expected a number, found string \"230\"",
    );
}

#[test]
fn suspicious_voltage_is_a_warning() {
    let site = ok(&base_with("voltage = 230.0", "voltage = 400"));
    assert_eq!(site.warnings().len(), 1);
    let w = &site.warnings()[0];
    assert_eq!((w.line, w.field.as_str()), (Some(7), "grid.voltage"));
    assert!(w.message.contains("400 V is line-to-line"), "{w}");
}

#[test]
fn bad_limits_negative_zero_nan_inf() {
    for bad in ["-63", "0", "0.0", "nan", "+inf", "-inf"] {
        let e = errs(&base_with("limit_a = 63.0", &format!("limit_a = {bad}")));
        assert_err(
            &e,
            "grid.limit_a",
            8,
            "must be a finite number of amps greater than 0",
        );
        let e = errs(&base_with("limit_a = 40.0", &format!("limit_a = {bad}")));
        assert_err(
            &e,
            "circuit \"feeder-a\".limit_a",
            12,
            "must be a finite number of amps greater than 0",
        );
        let e = errs(&base_with(
            "limit_a = 63.0",
            &format!("limit_a = 63.0\nlimit_kw = {bad}"),
        ));
        assert_err(
            &e,
            "grid.limit_kw",
            9,
            "must be a finite number of kW greater than 0",
        );
    }
    // Per-line arrays: 0 on a line is allowed (a single-phase sub-panel), negative/NaN not.
    let site = ok(&base_with("limit_a = 32.0", "limit_a = [32, 0, 0]"));
    assert_eq!(
        site.circuit("feeder-b").unwrap().limit_a,
        PerLine::new(32.0, 0.0, 0.0)
    );
    let e = errs(&base_with("limit_a = 32.0", "limit_a = [32, nan, 32]"));
    assert_err(&e, "circuit \"feeder-b\".limit_a[1]", 17, "got NaN");
    let e = errs(&base_with("limit_a = 32.0", "limit_a = [32, 32, -1]"));
    assert_err(&e, "circuit \"feeder-b\".limit_a[2]", 17, "0 or more");
    let e = errs(&base_with("limit_a = 32.0", "limit_a = [0, 0, 0]"));
    assert_err(&e, "circuit \"feeder-b\".limit_a", 17, "every line is 0 A");
    let e = errs(&base_with("limit_a = 32.0", "limit_a = [32, 32]"));
    assert_err(
        &e,
        "circuit \"feeder-b\".limit_a",
        17,
        "a wye grid has 3 lines",
    );
    let e = errs(&base_with("limit_a = 40.0\n", ""));
    assert_err(
        &e,
        "circuit \"feeder-a\".limit_a",
        10,
        "missing required key `limit_a`",
    );
}

#[test]
fn station_on_a_dead_line_is_a_warning() {
    let text = base_with("limit_a = 40.0", "limit_a = [40, 0, 0]")
        + &station_block(
            "id = \"CP-02\"\ncircuit = \"feeder-a\"\nphases = 1\nmax_current_a = 16\nwiring = [\"L2\"]",
        );
    let site = ok(&text);
    // feeder-b (32 A) is above feeder-a on L2 and L3; CP-01 (3-phase, no `wiring`: reported at
    // its table) and CP-02 (L2) load lines feeder-a gives 0 A.
    let w: Vec<(Option<usize>, &str)> = site
        .warnings()
        .iter()
        .map(|w| (w.line, w.field.as_str()))
        .collect();
    assert_eq!(
        w,
        [
            (Some(17), "circuit \"feeder-b\".limit_a"),
            (Some(19), "station \"CP-01\".wiring"),
            (Some(31), "station \"CP-02\".wiring"),
        ]
    );
    let w = &site.warnings()[2];
    assert_eq!(w.field, "station \"CP-02\".wiring");
    assert_eq!(w.line, Some(line_of(&text, "wiring = [\"L2\"]")));
    assert!(w.message.contains("loads L2"), "{w}");
}

// ---------------------------------------------------------------------------------------------
// Circuits
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_circuit_of_a_station() {
    let e = errs(&base_with(
        "circuit = \"feeder-a\"",
        "circuit = \"feeder-c\"",
    ));
    assert_err(
        &e,
        "station \"CP-01\".circuit",
        21,
        "circuit \"feeder-c\" is not defined (known: grid, feeder-a, feeder-b)",
    );
    assert_eq!(find(&e, "station \"CP-01\".circuit").column, Some(11));
}

#[test]
fn unknown_parent_circuit() {
    let e = errs(&base_with("parent = \"feeder-a\"", "parent = \"feeder-z\""));
    assert_err(
        &e,
        "circuit \"feeder-b\".parent",
        16,
        "circuit \"feeder-z\" is not defined",
    );
}

#[test]
fn circuit_cycles() {
    // feeder-a -> feeder-b -> feeder-a, reported once, at the first circuit of the cycle.
    let text = base_with(
        "id = \"feeder-a\"",
        "id = \"feeder-a\"\nparent = \"feeder-b\"",
    );
    let e = errs(&text);
    assert_eq!(e.len(), 1, "{e}");
    assert_err(
        &e,
        "circuit \"feeder-a\".parent",
        12,
        "circuits form a cycle: \"feeder-a\" → \"feeder-b\" → \"feeder-a\"",
    );
    // A circuit that is its own parent.
    let e = errs(&base_with("parent = \"feeder-a\"", "parent = \"feeder-b\""));
    assert_err(
        &e,
        "circuit \"feeder-b\".parent",
        16,
        "cycle: \"feeder-b\" → \"feeder-b\"",
    );
    // A three-circuit cycle with a tail hanging off it: one error.
    let text = format!(
        "{BASE}\n[[circuit]]\nid = \"x\"\nparent = \"z\"\nlimit_a = 10\n\n[[circuit]]\nid = \"y\"\nparent = \"x\"\nlimit_a = 10\n\n[[circuit]]\nid = \"z\"\nparent = \"y\"\nlimit_a = 10\n\n[[circuit]]\nid = \"tail\"\nparent = \"z\"\nlimit_a = 10\n"
    );
    let e = errs(&text);
    assert_eq!(e.len(), 1, "{e}");
    assert_err(
        &e,
        "circuit \"x\".parent",
        line_of(&text, "parent = \"z\""),
        "\"x\" → \"z\" → \"y\" → \"x\"",
    );
}

#[test]
fn duplicate_circuit_ids() {
    let text = base_with("id = \"feeder-b\"", "id = \"feeder-a\"");
    let e = errs(&text);
    let dup = e
        .errors
        .iter()
        .find(|x| x.message.contains("duplicate circuit id"))
        .unwrap_or_else(|| panic!("{e}"));
    assert_eq!(dup.line, Some(15));
    assert!(dup.message.contains("first defined on line 10"), "{dup}");
}

#[test]
fn grid_is_not_a_circuit_id() {
    let e = errs(&base_with("id = \"feeder-b\"", "id = \"grid\""));
    assert_err(&e, "circuit[1].id", 15, "reserved for the grid connection");
    let e = errs(&base_with("id = \"feeder-b\"", "id = \"Grid\""));
    assert_err(&e, "circuit[1].id", 15, "reserved");
}

#[test]
fn child_circuit_above_parent_is_a_warning() {
    let site = ok(&base_with("limit_a = 32.0", "limit_a = 50.0"));
    assert_eq!(site.warnings().len(), 1, "{:?}", site.warnings());
    let w = &site.warnings()[0];
    assert_eq!(w.field, "circuit \"feeder-b\".limit_a");
    assert_eq!(w.line, Some(17));
    assert!(w.message.contains("above its parent \"feeder-a\""), "{w}");
    // The parent's limit applies.
    assert_eq!(
        site.circuit("feeder-b").unwrap().effective_limit,
        PerLine::splat(40.0)
    );
    // A top-level circuit above the grid's fuse.
    let site = ok(&base_with("limit_a = 40.0", "limit_a = 80.0"));
    assert!(
        site.warnings()
            .iter()
            .any(|w| w.line == Some(12) && w.message.contains("the grid"))
    );
}

// ---------------------------------------------------------------------------------------------
// Stations
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicate_station_ids() {
    let text = format!(
        "{BASE}{}",
        station_block("id = \"CP-01\"\nphases = 1\nmax_current_a = 16")
    );
    let e = errs(&text);
    assert_err(
        &e,
        "station \"CP-01\".id",
        27,
        "duplicate station id \"CP-01\" (first defined on line 19)",
    );
}

#[test]
fn station_max_current_out_of_range() {
    for bad in ["0", "-16", "80.5", "nan", "inf"] {
        let e = errs(&base_with(
            "max_current_a = 32.0",
            &format!("max_current_a = {bad}"),
        ));
        assert_err(
            &e,
            "station \"CP-01\".max_current_a",
            23,
            "must be greater than 0 and at most 80 A",
        );
    }
    ok(&base_with("max_current_a = 32.0", "max_current_a = 80"));
    let e = errs(&base_with("max_current_a = 32.0\n", ""));
    assert_err(
        &e,
        "station \"CP-01\".max_current_a",
        19,
        "missing required key",
    );
    let e = errs(&base_with(
        "max_current_a = 32.0",
        "max_current_a = 32.0\nmin_current_a = 40",
    ));
    assert_err(
        &e,
        "station \"CP-01\".min_current_a",
        24,
        "above max_current_a",
    );
}

#[test]
fn station_id_rules() {
    let e = errs(&base_with("id = \"CP-01\"", "id = \"\""));
    assert_err(&e, "station[0].id", 20, "must not be empty");
    let long = "X".repeat(49);
    let e = errs(&base_with("id = \"CP-01\"", &format!("id = \"{long}\"")));
    assert_err(
        &e,
        "station[0].id",
        20,
        "49 characters long; OCPP allows at most 48",
    );
    let e = errs(&base_with("id = \"CP-01\"", "id = \"CP/01\""));
    assert_err(&e, "station[0].id", 20, "must not contain '/'");
    let e = errs(&base_with("id = \"CP-01\"", "id = \"CP\\u000101\""));
    assert_err(&e, "station[0].id", 20, "control characters");
    let e = errs(&base_with("id = \"CP-01\"\n", ""));
    assert_err(&e, "station[0].id", 19, "missing required key `id`");
    // Spaces, '%', non-ASCII: allowed (percent-decoded from the URL); 48 characters is fine.
    for good in ["Ladesäule 1", "CP%01", &"Ü".repeat(48)] {
        let site = ok(&base_with("id = \"CP-01\"", &format!("id = \"{good}\"")));
        assert!(site.station(good).is_some());
    }
}

#[test]
fn station_phases_and_evses() {
    let e = errs(&base_with("phases = 3", "phases = 4"));
    assert_err(
        &e,
        "station \"CP-01\".phases",
        22,
        "1, 2 or 3 phases, got 4",
    );
    let e = errs(&base_with("phases = 3", "phases = 3.0"));
    assert_err(
        &e,
        "station \"CP-01\".phases",
        22,
        "expected an integer, found float 3.0",
    );
    let e = errs(&base_with("phases = 3", "phases = 3\nevses = 0"));
    assert_err(&e, "station \"CP-01\".evses", 23, "between 1 and 64, got 0");
    let e = errs(&base_with("phases = 3", "phases = 3\nocpp = \"2.1\""));
    assert_err(
        &e,
        "station \"CP-01\".ocpp",
        23,
        "unknown OCPP version \"2.1\"",
    );
    let site = ok(&base_with("phases = 3", "phases = 3\nocpp = \"ocpp2.0.1\""));
    assert_eq!(site.station("CP-01").unwrap().ocpp, Some(OcppVersion::V201));
}

#[test]
fn security_profile_values() {
    let site = ok(BASE);
    assert_eq!(site.station("CP-01").unwrap().security_profile, 1);
    let e = errs(&base_with("phases = 3", "phases = 3\nsecurity_profile = 3"));
    assert_err(&e, "station \"CP-01\".security_profile", 23, "mutual TLS");
    let e = errs(&base_with("phases = 3", "phases = 3\nsecurity_profile = 0"));
    assert_err(
        &e,
        "station \"CP-01\".security_profile",
        23,
        "require_auth = false",
    );
}

// ---------------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------------

const DELTA: &str = r#"[site]
timezone = "Europe/Oslo"

[grid]
type = "delta"
voltage = 230
limit_a = 63

[[station]]
id = "S1"
phases = 1
max_current_a = 32
password = "0123456789abcdef"
"#;

const SPLIT: &str = r#"[site]
timezone = "America/Chicago"

[grid]
type = "split_phase"
voltage = 120
limit_a = 200

[[station]]
id = "S1"
phases = 1
max_current_a = 40
password = "0123456789abcdef"
"#;

fn with_wiring(base: &str, phases: u8, wiring: &str) -> String {
    base.replacen(
        "phases = 1",
        &format!("phases = {phases}\nwiring = {wiring}"),
        1,
    )
}

#[test]
fn wiring_is_checked_against_the_grid_by_the_model() {
    // Line-to-neutral on delta (no neutral).
    let e = errs(&with_wiring(DELTA, 1, "[\"L1\"]"));
    assert_err(
        &e,
        "station \"S1\".wiring",
        12,
        "a delta grid has no neutral",
    );
    // Line-to-line on delta: fine; on wye: not.
    let site = ok(&with_wiring(DELTA, 1, "[\"L2-L3\"]"));
    assert_eq!(
        site.station("S1").unwrap().wiring,
        StationWiring::single_phase_line_to_line(Line::L2, Line::L3)
    );
    let e = errs(&base_with("phases = 3", "phases = 1\nwiring = [\"L1-L2\"]"));
    assert_err(
        &e,
        "station \"CP-01\".wiring",
        23,
        "not allowed on a wye grid",
    );
    // L3 on split-phase.
    let e = errs(&with_wiring(SPLIT, 1, "[\"L3\"]"));
    assert_err(
        &e,
        "station \"S1\".wiring",
        12,
        "grid line L3 does not exist on a split_phase grid",
    );
    // The default 3-phase wiring does not fit split-phase either: reported at `phases`.
    let e = errs(&SPLIT.replace("phases = 1", "phases = 3"));
    assert_err(&e, "station \"S1\".wiring", 11, "set `wiring`");
    // Split-phase 240 V and 2-phase stations.
    let site = ok(&with_wiring(SPLIT, 1, "[\"L1-L2\"]"));
    assert_eq!(
        site.station("S1")
            .unwrap()
            .electrical
            .amps_to_watts(1, 40.0),
        9600.0
    );
    let site = ok(&SPLIT.replace("phases = 1", "phases = 2"));
    assert_eq!(
        site.station("S1").unwrap().wiring,
        StationWiring::two_phase(Line::L1, Line::L2)
    );
    // Duplicate lines.
    let e = errs(&base_with(
        "phases = 3",
        "phases = 3\nwiring = [\"L1\", \"L2\", \"L1\"]",
    ));
    assert_err(
        &e,
        "station \"CP-01\".wiring",
        23,
        "grid line L1 is used by more than one station phase",
    );
    // Length differs from phases.
    let e = errs(&base_with(
        "phases = 3",
        "phases = 3\nwiring = [\"L2\", \"L3\"]",
    ));
    assert_err(
        &e,
        "station \"CP-01\".wiring",
        23,
        "lists 2 lines but phases = 3",
    );
    let e = errs(&with_wiring(DELTA, 3, "[\"L1-L2\"]"));
    assert_err(
        &e,
        "station \"S1\".wiring",
        12,
        "one single-phase connection, but phases = 3",
    );
    // Not a connection.
    let e = errs(&base_with(
        "phases = 3",
        "phases = 3\nwiring = [\"L1\", \"L4\", \"L3\"]",
    ));
    assert_err(
        &e,
        "station \"CP-01\".wiring[1]",
        23,
        "\"L4\" is not a connection",
    );
    // Accepted spellings.
    let site = ok(&base_with("phases = 3", "phases = 1\nwiring = [\"l3-N\"]"));
    assert_eq!(
        site.station("CP-01").unwrap().wiring,
        StationWiring::single_phase(Line::L3)
    );
}

#[test]
fn split_phase_limits_have_two_lines() {
    let site = ok(&SPLIT.replace("limit_a = 200", "limit_a = [200, 150]"));
    assert_eq!(site.grid_limit(), PerLine::new(200.0, 150.0, 0.0));
    let site = ok(SPLIT);
    assert_eq!(site.grid_limit(), PerLine::new(200.0, 200.0, 0.0), "no L3");
    let e = errs(&SPLIT.replace("limit_a = 200", "limit_a = [200, 200, 200]"));
    assert_err(
        &e,
        "grid.limit_a",
        7,
        "a split_phase grid has 2 lines (L1, L2)",
    );
}

// ---------------------------------------------------------------------------------------------
// Passwords and credentials
// ---------------------------------------------------------------------------------------------

#[test]
fn password_length_is_16_to_40_characters() {
    let e = errs(&base_with(PW, "short-password"));
    assert_err(
        &e,
        "station \"CP-01\".password",
        24,
        "14 characters long; OCPP requires 16 to 40",
    );
    let e = errs(&base_with(PW, &"p".repeat(41)));
    assert_err(&e, "station \"CP-01\".password", 24, "41 characters");
    // Counted in characters, not bytes; ':' is allowed.
    ok(&base_with(PW, &"ü".repeat(40)));
    ok(&base_with(PW, "with:colons:1234"));
    // The password never appears in the message.
    let e = errs(&base_with(PW, "tooshort"));
    assert!(!e.to_string().contains("tooshort"), "{e}");
}

#[test]
fn two_password_sources_and_missing_password() {
    let text = base_with(PW, &format!("{PW}\"\npassword_env = \"X"));
    let e = errs(&text);
    assert_err(&e, "station \"CP-01\".password_env", 25, "give only one of");
    let e = errs(&base_with(&format!("password = \"{PW}\"\n"), ""));
    assert_err(
        &e,
        "station \"CP-01\".password",
        19,
        "a password is required",
    );
}

#[test]
fn require_auth_false_allows_stations_without_password_with_a_warning() {
    let text =
        base_with(&format!("password = \"{PW}\"\n"), "") + "\n[csms]\nrequire_auth = false\n";
    let site = ok(&text);
    assert!(site.station("CP-01").unwrap().credentials.is_none());
    let w = &site.warnings()[0];
    assert_eq!(w.field, "csms.require_auth");
    assert_eq!(w.line, Some(line_of(&text, "require_auth")));
    assert!(w.message.contains("labs only"));
    assert_eq!(site.admit("CP-01", None), Admission::Known);
}

#[test]
fn secrets_from_env() {
    let text = base_with(
        &format!("password = \"{PW}\""),
        "password_env = \"CP01_PW\"",
    );
    let good = |k: &str| (k == "CP01_PW").then(|| "from-the-environment".to_string());
    let site = SiteConfig::parse(&text, Path::new("."), &good).unwrap();
    let creds = site.station("CP-01").unwrap().credentials.clone().unwrap();
    assert!(creds.verify("from-the-environment"));
    assert!(!creds.verify("from-the-environmenT"));

    let e = errs(&text);
    assert_err(
        &e,
        "station \"CP-01\".password_env",
        24,
        "environment variable CP01_PW is not set",
    );
    let empty = |_: &str| Some(String::new());
    let e = SiteConfig::parse(&text, Path::new("."), &empty).unwrap_err();
    assert_err(&e, "station \"CP-01\".password_env", 24, "is empty");
}

#[test]
fn secrets_from_file_relative_to_the_site_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/cp01"), "from-a-file-0000\r\n").unwrap();
    let text = base_with(
        &format!("password = \"{PW}\""),
        "password_file = \"secrets/cp01\"",
    );
    let path = dir.path().join("site.toml");
    std::fs::write(&path, &text).unwrap();
    let site = SiteConfig::load(&path).unwrap();
    let creds = site.station("CP-01").unwrap().credentials.as_ref().unwrap();
    assert!(
        creds.verify("from-a-file-0000"),
        "trailing newline stripped"
    );
    assert!(!creds.verify("from-a-file-0000\r\n"));

    // Missing file: error at the key's value, naming the resolved path.
    let text = base_with(
        &format!("password = \"{PW}\""),
        "password_file = \"secrets/nope\"",
    );
    let e = SiteConfig::parse(&text, dir.path(), &no_env).unwrap_err();
    let x = find(&e, "station \"CP-01\".password_file");
    assert_eq!(x.line, Some(24));
    assert!(x.message.contains("cannot read password file"), "{x}");
    assert!(x.message.contains("secrets/nope"), "{x}");
    // Too short in the file.
    std::fs::write(dir.path().join("secrets/short"), "short\n").unwrap();
    let text = base_with(
        &format!("password = \"{PW}\""),
        "password_file = \"secrets/short\"",
    );
    let e = SiteConfig::parse(&text, dir.path(), &no_env).unwrap_err();
    assert_err(
        &e,
        "station \"CP-01\".password_file",
        24,
        "5 characters long",
    );
}

#[test]
fn debug_output_never_contains_a_password() {
    let secret = "s3cret-in-line-password";
    let site = ok(&base_with(PW, secret));
    let dbg = format!("{site:?}");
    assert!(!dbg.contains(secret), "{dbg}");
    assert!(dbg.contains("StationCredentials(<redacted>)"));
    let env_secret = "s3cret-from-the-env";
    let text = base_with(&format!("password = \"{PW}\""), "password_env = \"PW\"");
    let env = |_: &str| Some(env_secret.to_string());
    let site = SiteConfig::parse(&text, Path::new("."), &env).unwrap();
    let dbg = format!("{site:?} {}", site.summary());
    assert!(!dbg.contains(env_secret));
}

#[test]
fn credentials_verify() {
    let c = StationCredentials::new("correct horse battery");
    assert!(c.verify("correct horse battery"));
    assert!(!c.verify("correct horse batterY"));
    assert!(!c.verify(""));
    assert!(!c.verify("correct horse battery "));
    assert_eq!(format!("{c:?}"), "StationCredentials(<redacted>)");
    assert_eq!(c, StationCredentials::new("correct horse battery"));
}

#[test]
fn station_directory_admission() {
    let site = ok(BASE);
    assert_eq!(site.admit("CP-01", Some(PW)), Admission::Known);
    assert_eq!(
        site.admit("CP-01", Some("wrong-password-000")),
        Admission::Unauthorized
    );
    assert_eq!(site.admit("CP-01", None), Admission::Unauthorized);
    assert_eq!(site.admit("CP-99", Some(PW)), Admission::NotFound);
    let site = ok(&format!(
        "{BASE}\n[csms]\nallow_unknown_stations = true\nunknown_station_current_a = 6\n"
    ));
    assert_eq!(site.admit("CP-99", None), Admission::Unknown);
    assert_eq!(site.csms().unknown_station_current_a, 6.0);
}

// ---------------------------------------------------------------------------------------------
// Service sections
// ---------------------------------------------------------------------------------------------

#[test]
fn csms_numbers() {
    let text = format!("{BASE}\n[csms]\nmeter_interval_s = 0\nmax_frame_bytes = 512\n");
    let e = errs(&text);
    assert_err(&e, "csms.meter_interval_s", 27, "between 1 and 3600, got 0");
    assert_err(&e, "csms.max_frame_bytes", 28, "between 1024 and");
    let text = format!("{BASE}\n[csms]\nunknown_station_current_a = -1\n");
    assert_err(
        &errs(&text),
        "csms.unknown_station_current_a",
        27,
        "between 0 and 80 A",
    );
    let site = ok(&format!("{BASE}\n[csms]\nheartbeat_interval_s = 60\n"));
    assert_eq!(site.csms().heartbeat_interval().as_secs(), 60);
    assert_eq!(site.csms().max_frame_bytes, 1 << 20, "default");
}

#[test]
fn listen_addresses_must_parse() {
    let text = format!("{BASE}\n[csms]\nlisten = \"localhost:9000\"\n\n[api]\nlisten = \"8080\"\n");
    let e = errs(&text);
    assert_err(&e, "csms.listen", 27, "not a socket address");
    assert_err(&e, "api.listen", 30, "not a socket address");
    let e = errs(&format!("{BASE}\n[api]\nlisten = \"0.0.0.0:9000\"\n"));
    assert_err(&e, "api.listen", 27, "collides with csms.listen");
    let site = ok(&format!("{BASE}\n[csms]\nlisten = \"[::1]:9000\"\n"));
    assert_eq!(site.csms().listen.port(), 9000);
}

#[test]
fn authorization_local_list() {
    let text = format!("{BASE}\n[authorization]\nmode = \"local_list\"\n");
    assert_err(
        &errs(&text),
        "authorization.mode",
        27,
        "needs at least one id tag",
    );
    let text = format!("{BASE}\n[authorization]\nmode = \"local_list\"\nid_tags = []\n");
    assert_err(
        &errs(&text),
        "authorization.mode",
        27,
        "needs at least one id tag",
    );
    let text = format!("{BASE}\n[authorization]\nmode = \"whitelist\"\n");
    assert_err(
        &errs(&text),
        "authorization.mode",
        27,
        "unknown mode \"whitelist\"",
    );
    let text = format!("{BASE}\n[authorization]\nmode = \"local_list\"\nid_tags = [\"AB CD\"]\n");
    assert_err(&errs(&text), "authorization.id_tags[0]", 28, "spaces");

    // Tags from a file, merged with the inline ones; mistakes point into that file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tags.txt"),
        "# fleet cards\nAA11\n\nBB22  # spare\n",
    )
    .unwrap();
    let text = format!(
        "{BASE}\n[authorization]\nmode = \"local_list\"\nid_tags = [\"CC33\"]\nid_tags_file = \"tags.txt\"\n"
    );
    let site = SiteConfig::parse(&text, dir.path(), &no_env).unwrap();
    let tags: Vec<&str> = site
        .authorization()
        .id_tags
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(tags, ["AA11", "BB22", "CC33"]);
    std::fs::write(
        dir.path().join("tags.txt"),
        "AA11\n  {}\n".replace("{}", &"X".repeat(37)),
    )
    .unwrap();
    let e = SiteConfig::parse(&text, dir.path(), &no_env).unwrap_err();
    let x = find(&e, "authorization.id_tags_file");
    assert_eq!((x.line, x.column), (Some(2), Some(3)));
    assert!(x.file.as_deref().unwrap().ends_with("tags.txt"));
}

#[test]
fn store_and_logging() {
    let text = format!(
        "{BASE}\n[store]\ndownsample_minutes = 7\n\n[logging]\nformat = \"xml\"\nfilter = \"info,,=[\"\n"
    );
    let e = errs(&text);
    assert_err(&e, "store.downsample_minutes", 27, "does not divide a day");
    assert_err(&e, "logging.format", 30, "unknown format \"xml\"");
    assert_err(&e, "logging.filter", 31, "not a log filter");
    let site = ok(&format!(
        "{BASE}\n[store]\ndata_dir = \"/var/lib/x\"\n[logging]\nformat = \"json\"\nfilter = \"info,loadstar=debug\"\n"
    ));
    assert_eq!(site.store().data_dir, PathBuf::from("/var/lib/x"));
    assert_eq!(site.logging().format, LogFormat::Json);
    assert_eq!(site.store().raw_retention_days, 7, "default");
}

// ---------------------------------------------------------------------------------------------
// TOML-level mistakes
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_keys_are_errors_with_a_hint() {
    let e = errs(&base_with("limit_a = 40.0", "limt_a = 40.0"));
    assert_err(
        &e,
        "circuit \"feeder-a\".limt_a",
        12,
        "did you mean `limit_a`?",
    );
    assert_eq!(find(&e, "circuit \"feeder-a\".limt_a").column, Some(1));
    // The missing limit_a is reported too.
    find(&e, "circuit \"feeder-a\".limit_a");
    let e = errs(&format!("{BASE}\n[stations]\nid = \"x\"\n"));
    assert_err(&e, "stations", 26, "did you mean `station`?");
    let e = errs(&base_with("phases = 3", "phases = 3\ncolour = \"red\""));
    assert_err(
        &e,
        "station \"CP-01\".colour",
        23,
        "unknown key in `station \"CP-01\"`",
    );
    let e = errs(&format!("{BASE}\n[csms]\nheartbeat = 300\n"));
    assert_err(&e, "csms.heartbeat", 27, "unknown key in `csms`");
}

#[test]
fn toml_syntax_errors_have_line_and_column() {
    let e = errs(&base_with("voltage = 230.0", "voltage = 230.0.0"));
    let x = &e.errors[0];
    assert_eq!(x.line, Some(7), "{e}");
    assert!(x.column.is_some());
    assert!(x.message.starts_with("TOML syntax"), "{x}");
    let e = errs(&base_with("name = \"Test\"", "name = \"Test"));
    assert_eq!(e.errors[0].line, Some(2), "{e}");
    let e = errs(&format!("{BASE}\n[grid]\ntype = \"wye\"\n"));
    assert!(
        e.errors.iter().any(|x| x.line == Some(26)),
        "duplicate table: {e}"
    );
}

#[test]
fn type_errors_have_line_and_column() {
    let e = errs(&base_with("limit_a = 63.0", "limit_a = \"63\""));
    assert_err(
        &e,
        "grid.limit_a",
        8,
        "expected a number, found string \"63\"",
    );
    assert_eq!(find(&e, "grid.limit_a").column, Some(11));
    let e = errs(&base_with("[[station]]", "[station]"));
    assert_err(&e, "station", 19, "write each entry as `[[station]]`");
    let e = errs(&format!("{BASE}\n[csms]\nrequire_auth = \"yes\"\n"));
    assert_err(&e, "csms.require_auth", 27, "expected true or false");
}

#[test]
fn several_mistakes_are_all_reported_in_file_order() {
    let text = r#"[site]
timezone = "Mars/Olympus"

[grid]
type = "wye"
voltage = 230
limit_a = -63

[[circuit]]
id = "grid"
limit_a = 40

[[circuit]]
id = "feeder-b"
parent = "feeder-q"
limit_a = nan

[[station]]
id = "CP-01"
circuit = "feeder-c"
phases = 3
max_current_a = 120
evses = 0
password = "short"

[[station]]
id = "CP-01"
phases = 1
max_current_a = 16
wiring = ["L1", "L2"]
password = "0123456789abcdef"
password_env = "PW"

[csms]
meter_interval_s = 0
listen = "nowhere"

[authorization]
mode = "local_list"
"#;
    let e = errs(text);
    let lines: Vec<usize> = e.errors.iter().map(|x| x.line.unwrap()).collect();
    assert_eq!(
        lines,
        vec![2, 7, 10, 15, 16, 20, 22, 23, 24, 27, 30, 32, 35, 36, 39],
        "{e}"
    );
    assert!(e.to_string().ends_with("15 errors"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// [[plugin]]
// ---------------------------------------------------------------------------------------------

#[test]
fn plugins_with_config_grants_and_limits() {
    let text = format!(
        "{BASE}
[[plugin]]
name = \"grid-meter\"
world = \"meter\"
wasm = \"plugins/http_json_meter.wasm\"
config = {{ preset = \"homewizard-p1\", base = \"http://192.168.1.30\", fields = {{ total_power = {{ pointer = \"/p\", scale = 1.5 }} }}, tags = [1, true] }}
grants = {{ http = [\"192.168.1.30:80\"], kv_max_keys = 10 }}
limits = {{ deadline_ms = 80, memory_mib = 16 }}

[[plugin]]
name = \"tariff\"
world = \"policy\"
wasm = \"/opt/loadstar/tou.wasm\"
"
    );
    let c = ok(&text);
    let plugins = c.plugins();
    assert_eq!(plugins.len(), 2);
    let p = &plugins[0];
    assert_eq!(p.spec.name, "grid-meter");
    assert_eq!(p.spec.world, loadstar::plugins::World::Meter);
    assert_eq!(
        p.wasm,
        PathBuf::from("/srv/site/plugins/http_json_meter.wasm")
    );
    assert_eq!(
        serde_json::Value::Object(p.spec.config.clone()),
        serde_json::json!({
            "preset": "homewizard-p1", "base": "http://192.168.1.30",
            "fields": { "total_power": { "pointer": "/p", "scale": 1.5 } }, "tags": [1, true]
        })
    );
    assert_eq!(p.spec.grants.http, vec!["192.168.1.30:80".to_string()]);
    assert_eq!(p.spec.grants.kv_max_keys, 10);
    assert_eq!(p.spec.grants.kv_max_bytes, 64 * 1024, "default");
    assert_eq!(p.spec.limits.deadline_ms, 80);
    assert_eq!(p.spec.limits.memory_bytes, 16 << 20);
    let t = &plugins[1];
    assert_eq!(t.spec.world, loadstar::plugins::World::Policy);
    assert_eq!(t.wasm, PathBuf::from("/opt/loadstar/tou.wasm"));
    assert!(t.spec.grants.http.is_empty(), "nothing granted by default");
    assert_eq!(t.spec.limits.deadline_ms, 50);
    assert!(ok(BASE).plugins().is_empty());
}

#[test]
fn plugin_mistakes_are_reported_at_their_line() {
    let text = format!(
        "{BASE}
[[plugin]]
name = \"a\"
world = \"metre\"
wasm = \"a.wasm\"
sockets = true
grants = {{ http = [\"no-port\"], files = [\"/\"] }}
limits = {{ deadline_ms = 0 }}

[[plugin]]
name = \"b\"
world = \"meter\"
wasm = \"b.wasm\"

[[plugin]]
name = \"b\"
world = \"policy\"
wasm = \"\"
"
    );
    let e = errs(&text);
    assert_err(
        &e,
        "plugin[0].world",
        line_of(&text, "\"metre\""),
        "unknown world",
    );
    assert_err(
        &e,
        "plugin[0].sockets",
        line_of(&text, "sockets"),
        "unknown key",
    );
    assert_err(
        &e,
        "plugin[0].grants.http",
        line_of(&text, "no-port"),
        "not host:port",
    );
    assert_err(
        &e,
        "plugin[0].grants.files",
        line_of(&text, "no-port"),
        "unknown key",
    );
    assert_err(
        &e,
        "plugin[0].limits.deadline_ms",
        line_of(&text, "deadline_ms = 0"),
        "between 1 and 60000",
    );
    assert_err(
        &e,
        "plugin[2].wasm",
        line_of(&text, "wasm = \"\""),
        "must not be empty",
    );

    let dup = format!(
        "{BASE}
[[plugin]]
name = \"m\"
world = \"meter\"
wasm = \"m.wasm\"

[[plugin]]
name = \"m\"
world = \"meter\"
wasm = \"n.wasm\"
"
    );
    let e = errs(&dup);
    let second = dup
        .rfind("name = \"m\"")
        .map(|i| dup[..i].matches('\n').count() + 1)
        .expect("line");
    assert_err(&e, "plugin[1].name", second, "already used by plugin[0]");

    let bad_name =
        format!("{BASE}\n[[plugin]]\nname = \"has space\"\nworld = \"meter\"\nwasm = \"x.wasm\"\n");
    let e = errs(&bad_name);
    assert_err(
        &e,
        "plugin[0]",
        line_of(&bad_name, "[[plugin]]"),
        "invalid configuration",
    );
}

#[test]
fn a_policy_has_an_evaluation_interval_and_safe_limits_on_known_nodes() {
    let text = format!(
        "{BASE}
[[plugin]]
name = \"peak\"
world = \"policy\"
wasm = \"peak.wasm\"
every_s = 5
safe_limits = {{ grid = 40 }}

[[plugin]]
name = \"tariff\"
world = \"policy\"
wasm = \"tou.wasm\"
"
    );
    let c = ok(&text);
    let p = &c.plugins()[0];
    assert_eq!(p.every, std::time::Duration::from_secs(5));
    assert_eq!(p.safe_limits.get("grid"), Some(&40.0));
    let t = &c.plugins()[1];
    assert_eq!(t.every, std::time::Duration::from_secs(10), "default");
    assert!(t.safe_limits.is_empty(), "none by default");

    let bad = format!(
        "{BASE}
[[plugin]]
name = \"peak\"
world = \"policy\"
wasm = \"peak.wasm\"
every_s = 0
safe_limits = {{ nowhere = 40, grid = -1 }}

[[plugin]]
name = \"m\"
world = \"meter\"
wasm = \"m.wasm\"
every_s = 5
"
    );
    let e = errs(&bad);
    assert_err(
        &e,
        "plugin[0].every_s",
        line_of(&bad, "every_s = 0"),
        "between 1 and 86400",
    );
    assert_err(
        &e,
        "plugin[0].safe_limits.nowhere",
        line_of(&bad, "nowhere"),
        "no node \"nowhere\"",
    );
    assert_err(
        &e,
        "plugin[0].safe_limits.grid",
        line_of(&bad, "nowhere"),
        "at least 0 A",
    );
    assert_err(
        &e,
        "plugin[1].every_s",
        line_of(&bad, "every_s = 5"),
        "only a policy",
    );
}

#[test]
fn the_summary_lists_each_plugin_with_its_world_component_grants_and_limits() {
    let text = format!(
        "{BASE}
[[plugin]]
name = \"grid-meter\"
world = \"meter\"
wasm = \"plugins/sunspec_meter.wasm\"
grants = {{ modbus = [\"192.168.1.20:502\"], http = [\"10.0.0.2:80\", \"10.0.0.3:8080\"] }}
limits = {{ deadline_ms = 80, memory_mib = 16 }}

[[plugin]]
name = \"cap\"
world = \"policy\"
wasm = \"/opt/loadstar/peak_shaving.wasm\"
grants = {{ kv_max_bytes = 0 }}
"
    );
    let summary = ok(&text).summary();
    let lines: Vec<&str> = summary.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no line starting {needle:?} in:\n{summary}"))
    };
    let meter = at("plugin grid-meter (meter): /srv/site/plugins/sunspec_meter.wasm");
    assert_eq!(
        lines[meter + 1],
        "  grants: http 10.0.0.2:80, 10.0.0.3:8080; modbus 192.168.1.20:502; kv 65536 bytes in 256 keys"
    );
    assert_eq!(
        lines[meter + 2],
        "  limits: deadline 80 ms, memory 16 MiB, failed after 3 errors, restart backoff 1000–300000 ms, \
         HTTP responses up to 1048576 bytes"
    );
    let cap = at("plugin cap (policy): /opt/loadstar/peak_shaving.wasm");
    assert_eq!(cap, meter + 3);
    assert_eq!(lines[cap + 1], "  grants: http none; modbus none; kv none");
    let last = lines.last().expect("the count line");
    assert!(last.contains(", 2 plugins;"), "{summary}");
    assert!(ok(BASE).summary().contains(", 0 plugins;"));
}

#[test]
fn load_refuses_a_plugin_component_that_is_missing_or_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("meter.wasm"),
        loadstar_plugin_artifacts::PROBE_METER,
    )
    .unwrap();
    // A core module (`wasm32-unknown-unknown`): the right magic, layer 0.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(dir.path().join("notes.wasm"), b"hello").unwrap();
    std::fs::create_dir(dir.path().join("folder.wasm")).unwrap();
    let entry = |name: &str, wasm: &str| {
        format!("\n[[plugin]]\nname = \"{name}\"\nworld = \"meter\"\nwasm = \"{wasm}\"\n")
    };
    let path = dir.path().join("site.toml");
    let good = format!("{BASE}{}", entry("ok", "meter.wasm"));
    std::fs::write(&path, &good).unwrap();
    let report = check(&path);
    assert!(report.is_ok(), "{report}");
    let shown = report.to_string();
    assert!(
        shown.contains(&format!(
            "plugin ok (meter): {}",
            dir.path().join("meter.wasm").display()
        )),
        "{shown}"
    );

    let text = format!(
        "{BASE}{}{}{}{}{}",
        entry("missing", "gone.wasm"),
        entry("core", "core.wasm"),
        entry("notes", "notes.wasm"),
        entry("folder", "folder.wasm"),
        entry("ok", "meter.wasm"),
    );
    std::fs::write(&path, &text).unwrap();
    let e = SiteConfig::load(&path).unwrap_err();
    assert_eq!(e.len(), 4, "{e}");
    assert_err(
        &e,
        "plugin[0].wasm",
        line_of(&text, "gone.wasm"),
        "cannot read the component",
    );
    assert_err(
        &e,
        "plugin[1].wasm",
        line_of(&text, "core.wasm"),
        "a core WebAssembly module, not a component",
    );
    assert_err(
        &e,
        "plugin[1].wasm",
        line_of(&text, "core.wasm"),
        "wasm32-wasip2",
    );
    assert_err(
        &e,
        "plugin[2].wasm",
        line_of(&text, "notes.wasm"),
        "is not a WebAssembly component",
    );
    assert_err(
        &e,
        "plugin[3].wasm",
        line_of(&text, "folder.wasm"),
        "cannot read the component",
    );
    let shown = check(&path).to_string();
    assert!(shown.contains("site.toml:"), "{shown}");
    assert!(shown.ends_with("4 errors"), "{shown}");
    // Text given to `parse` does not open component files.
    assert!(SiteConfig::parse(&text, dir.path(), &no_env).is_ok());
}

// ---------------------------------------------------------------------------------------------
// [control]
// ---------------------------------------------------------------------------------------------

#[test]
fn control_defaults_and_settings() {
    let c = ok(BASE);
    let d = c.control();
    assert_eq!(d.tick_ms, 1000);
    assert_eq!(d.ramp_s, 5);
    assert_eq!(d.hysteresis_a, 1.0);
    assert_eq!(d.profile_validity_s, 300);
    assert_eq!(d.building_reserve_a, 0.0);
    assert_eq!(d.worst_case_load_a, 0.0);
    assert_eq!(d.grid_meter, None);

    let text =
        format!("{BASE}\n[control]\ntick_ms = 500\nbuilding_reserve_a = 12.5\nhysteresis_a = 2\n");
    let c = ok(&text);
    let d = c.control();
    assert_eq!(d.tick_ms, 500);
    assert_eq!(d.building_reserve_a, 12.5);
    assert_eq!(
        d.worst_case_load_a, 12.5,
        "the worst case defaults to the reserve"
    );
    assert_eq!(d.hysteresis_a, 2.0);
}

#[test]
fn control_dwell_and_turn() {
    let d = ok(BASE).control().clone();
    assert_eq!((d.dwell_s, d.turn_s, d.raise_interval_s), (300, 900, 10));
    let c = ok(&format!("{BASE}\n[control]\nraise_interval_s = 0\n"));
    assert_eq!(c.control().raise_interval_s, 0);
    let text = format!("{BASE}\n[control]\nraise_interval_s = 7200\n");
    assert_err(
        &errs(&text),
        "control.raise_interval_s",
        line_of(&text, "raise_interval_s"),
        "between 0 and 3600",
    );
    let c = ok(&format!(
        "{BASE}\n[control]\ndwell_s = 120\nturn_s = 1800\n"
    ));
    assert_eq!((c.control().dwell_s, c.control().turn_s), (120, 1800));
    let text = format!("{BASE}\n[control]\ndwell_s = 600\nturn_s = 300\n");
    let e = errs(&text);
    assert_err(
        &e,
        "control.turn_s",
        line_of(&text, "turn_s = 300"),
        "at least dwell_s (600)",
    );
}

#[test]
fn control_phase_switching() {
    let d = ok(BASE).control().clone();
    assert_eq!((d.phase_switching, d.phase_switch_s), (false, 300));
    let c = ok(&format!(
        "{BASE}\n[control]\nphase_switching = true\nphase_switch_s = 600\n"
    ));
    assert_eq!(
        (c.control().phase_switching, c.control().phase_switch_s),
        (true, 600)
    );
    let text = format!("{BASE}\n[control]\nphase_switch_s = 10\n");
    assert_err(
        &errs(&text),
        "control.phase_switch_s",
        line_of(&text, "phase_switch_s"),
        "between 60 and 86400",
    );
}

#[test]
fn control_fleet_needs() {
    assert!(ok(BASE).control().fleet.is_empty());
    assert_eq!(ok(BASE).control().plan_interval_s, 300);
    let text = format!(
        "{BASE}\n[control]\nplan_interval_s = 120\n\n[[control.fleet]]\nid_tags = [\"BUS-01\", \"BUS-02\"]\ndeparture = \"05:30\"\nenergy_kwh = 180\n"
    );
    let c = ok(&text);
    let d = c.control();
    assert_eq!(d.plan_interval_s, 120);
    assert_eq!(d.fleet.len(), 1);
    assert_eq!(d.fleet[0].id_tags, vec!["BUS-01", "BUS-02"]);
    assert_eq!(
        d.fleet[0].departure,
        chrono::NaiveTime::from_hms_opt(5, 30, 0).expect("time")
    );
    assert_eq!(d.fleet[0].energy_wh, 180_000.0);

    let text = format!(
        "{BASE}\n[[control.fleet]]\nid_tags = [\"A\"]\ndeparture = \"25:00\"\nenergy_kwh = 0\n\n[[control.fleet]]\nid_tags = [\"A\"]\ndeparture = \"06:00\"\nenergy_kwh = 10\nseats = 3\n"
    );
    let e = errs(&text);
    assert_err(
        &e,
        "control.fleet[0].departure",
        line_of(&text, "25:00"),
        "HH:MM",
    );
    assert_err(
        &e,
        "control.fleet[0].energy_kwh",
        line_of(&text, "energy_kwh = 0"),
        "above 0",
    );
    assert!(e.to_string().contains("already in control.fleet[0]"), "{e}");
    assert!(e.to_string().contains("seats"), "{e}");
}

#[test]
fn control_errors_name_their_line_and_field() {
    let text = format!("{BASE}\n[control]\ntick_ms = 5\nhysteresis_a = -1\nfallback = 3\n");
    let e = errs(&text);
    assert_err(
        &e,
        "control.tick_ms",
        line_of(&text, "tick_ms = 5"),
        "between",
    );
    assert_err(
        &e,
        "control.hysteresis_a",
        line_of(&text, "hysteresis_a"),
        "between 0.1 and 16",
    );
    assert!(e.to_string().contains("fallback"), "{e}");

    let text = format!("{BASE}\n[control]\ngrid_meter = \"p1\"\n");
    let e = errs(&text);
    assert_err(
        &e,
        "control.grid_meter",
        line_of(&text, "grid_meter"),
        "no [[plugin]]",
    );
}
