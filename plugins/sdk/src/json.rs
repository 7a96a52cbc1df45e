//! JSON-pointer extraction (RFC 6901) for HTTP meters.

use serde_json::Value;

/// Why a value could not be taken from a document.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtractError {
    /// The body is not JSON.
    NotJson(String),
    /// The pointer does not start with `/` (and is not empty).
    BadPointer(String),
    /// The value at the pointer is neither a number nor a numeric string.
    NotANumber { pointer: String, found: String },
}

impl std::fmt::Display for ExtractError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExtractError::NotJson(e) => write!(f, "body is not JSON: {e}"),
            ExtractError::BadPointer(p) => {
                write!(f, "'{p}' is not a JSON pointer (it must start with '/')")
            }
            ExtractError::NotANumber { pointer, found } => {
                write!(f, "{pointer} is not a number (found {found})")
            }
        }
    }
}

/// Parses a response body.
pub fn parse(body: &[u8]) -> Result<Value, ExtractError> {
    serde_json::from_slice(body).map_err(|e| ExtractError::NotJson(e.to_string()))
}

/// The number at `pointer`: `Ok(None)` if the document has nothing there (or `null`), an error
/// if something else is there. Numeric strings (`"230.1"`) are accepted; some meters send them.
pub fn number(doc: &Value, pointer: &str) -> Result<Option<f64>, ExtractError> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(ExtractError::BadPointer(pointer.to_string()));
    }
    match doc.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64().filter(|v| v.is_finite())),
        Some(Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(ExtractError::NotANumber {
                pointer: pointer.to_string(),
                found: format!("{s:?}"),
            }),
        },
        Some(other) => Err(ExtractError::NotANumber {
            pointer: pointer.to_string(),
            found: short(other),
        }),
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 40 {
        let mut end = 40;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_strings_and_absence() {
        let doc =
            parse(br#"{"emeters":[{"power":-120.5,"voltage":"230.1"}],"x":null,"s":"n/a","o":{}}"#)
                .expect("valid JSON");
        assert_eq!(number(&doc, "/emeters/0/power"), Ok(Some(-120.5)));
        assert_eq!(number(&doc, "/emeters/0/voltage"), Ok(Some(230.1)));
        assert_eq!(number(&doc, "/emeters/1/power"), Ok(None));
        assert_eq!(number(&doc, "/x"), Ok(None));
        assert!(matches!(
            number(&doc, "/s"),
            Err(ExtractError::NotANumber { .. })
        ));
        assert!(matches!(
            number(&doc, "/o"),
            Err(ExtractError::NotANumber { .. })
        ));
        assert!(matches!(
            number(&doc, "emeters"),
            Err(ExtractError::BadPointer(_))
        ));
    }

    #[test]
    fn escaped_pointer_tokens() {
        let doc = parse(br#"{"a/b":{"m~n":7}}"#).expect("valid JSON");
        assert_eq!(number(&doc, "/a~1b/m~0n"), Ok(Some(7.0)));
    }

    #[test]
    fn not_json() {
        assert!(matches!(parse(b"<html>"), Err(ExtractError::NotJson(_))));
    }
}
