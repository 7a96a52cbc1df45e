//! Strict validation of every payload against the official OCA JSON schemas.
//!
//! The schemas are shipped unmodified in `schemas/` (see `schemas/SOURCE.md`) and embedded at
//! compile time. Each version's validators are built once, on first use, and then shared.

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::Draft;
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use crate::OcppVersion;
use crate::error::{ErrorCode, Violation};

mod embedded {
    include!("schema_files.rs");
}

/// Which half of an exchange a payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    Request,
    Response,
}

struct VersionSchemas {
    validators: HashMap<(&'static str, PayloadKind), jsonschema::Validator>,
}

fn schemas(version: OcppVersion) -> &'static VersionSchemas {
    static V16: OnceLock<VersionSchemas> = OnceLock::new();
    static V201: OnceLock<VersionSchemas> = OnceLock::new();
    match version {
        OcppVersion::V16 => V16.get_or_init(|| build(version, embedded::V16, Draft::Draft4)),
        OcppVersion::V201 => V201.get_or_init(|| build(version, embedded::V201, Draft::Draft6)),
    }
}

fn build(
    version: OcppVersion,
    files: &'static [(&'static str, PayloadKind, &'static str)],
    draft: Draft,
) -> VersionSchemas {
    let mut validators = HashMap::with_capacity(files.len());
    for &(action, kind, text) in files {
        // The 2.x files may start with a UTF-8 byte order mark.
        let text = text.trim_start_matches('\u{feff}');
        // The schemas are compile-time constants checked by this crate's tests: a failure here is
        // a build defect, not bad input, so it is reported loudly and the schema is skipped
        // (messages for it then fail validation rather than pass unchecked).
        let schema: Value = match serde_json::from_str(text) {
            Ok(schema) => schema,
            Err(e) => {
                debug_assert!(false, "{version} schema {action} {kind:?} is not JSON: {e}");
                continue;
            }
        };
        match jsonschema::options().with_draft(draft).build(&schema) {
            Ok(validator) => {
                validators.insert((action, kind), validator);
            }
            Err(e) => debug_assert!(false, "{version} schema {action} {kind:?} invalid: {e}"),
        }
    }
    VersionSchemas { validators }
}

/// Builds every validator of `version` now instead of on first use (call at start-up so the
/// first station does not pay for it).
pub fn warm_up(version: OcppVersion) {
    let _ = schemas(version);
}

/// How many schemas of `version` compiled (for tests and start-up checks).
pub fn compiled_count(version: OcppVersion) -> usize {
    schemas(version).validators.len()
}

/// Whether `action` exists in `version` (has a request schema).
pub fn is_known_action(version: OcppVersion, action: &str) -> bool {
    schemas(version)
        .validators
        .contains_key(&(action, PayloadKind::Request))
}

/// Validates `payload` as the request or response of `action`.
///
/// An unknown action gives `NotImplemented`. Schema failures map to the spec's codes: a missing
/// required field is an occurrence violation, a wrong JSON type a type violation, an unexpected
/// property a format violation, and every other constraint (enum, length, range, pattern,
/// multipleOf) a property violation.
pub fn validate(
    version: OcppVersion,
    action: &str,
    kind: PayloadKind,
    payload: &Value,
) -> Result<(), Violation> {
    let Some(validator) = schemas(version).validators.get(&(action, kind)) else {
        return Err(Violation::new(
            ErrorCode::NotImplemented,
            format!("unknown {version} action {action:?}"),
        ));
    };
    // The common case first: `is_valid` short-circuits and builds no error values.
    if validator.is_valid(payload) {
        return Ok(());
    }
    let Some(error) = validator.iter_errors(payload).next() else {
        return Ok(());
    };
    let code = match error.kind() {
        ValidationErrorKind::Required { .. }
        | ValidationErrorKind::MinItems { .. }
        | ValidationErrorKind::MaxItems { .. } => ErrorCode::OccurrenceConstraintViolation,
        ValidationErrorKind::Type { .. } => ErrorCode::TypeConstraintViolation,
        ValidationErrorKind::AdditionalProperties { .. } => ErrorCode::FormatViolation,
        _ => ErrorCode::PropertyConstraintViolation,
    };
    let path = error.instance_path().to_string();
    let at = if path.is_empty() { "/" } else { path.as_str() };
    Err(Violation::new(code, format!("{action} at {at}: {error}")))
}
