//! Reading typed values out of a spanned TOML tree (`toml::de::DeTable`), reporting every type
//! error and unknown key with its place instead of stopping at the first.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::{Diag, suggest};

/// A value with the byte range it came from.
#[derive(Debug, Clone)]
pub(crate) struct Located<T> {
    pub(crate) value: T,
    pub(crate) span: Range<usize>,
}

pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// One TOML table of the site file and the field path it is reported under.
pub(crate) struct Table<'a, 'i> {
    pub(crate) table: &'a DeTable<'i>,
    /// The table header (`[grid]`, `[[station]]`) or inline table.
    pub(crate) span: Option<Range<usize>>,
    /// `grid`, `station "CP-01"`, `station[3]`; empty for the document root.
    pub(crate) path: String,
}

impl<'a, 'i> Table<'a, 'i> {
    pub(crate) fn new(table: &'a DeTable<'i>, span: Option<Range<usize>>, path: String) -> Self {
        Table { table, span, path }
    }

    /// The field path of `key` in this table.
    pub(crate) fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Value<'i>> {
        self.table.get(key)
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// The span of `key` itself (not its value).
    pub(crate) fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.table
            .get_key_value(key)
            .map(|(k, _)| k.span())
            .or_else(|| self.span.clone())
    }

    /// Reports every key not in `known`, with a "did you mean" hint for typos.
    pub(crate) fn check_keys(&self, known: &[&str], d: &mut Diag<'_>) {
        for (key, _) in self.table.iter() {
            let name = key.get_ref().as_ref();
            if known.contains(&name) {
                continue;
            }
            let hint = match suggest(name, known) {
                Some(s) => format!("; did you mean `{s}`?"),
                None => format!(" (known keys: {})", known.join(", ")),
            };
            let what = if self.path.is_empty() {
                "unknown section or key".to_string()
            } else {
                format!("unknown key in `{}`", self.path)
            };
            d.error(Some(key.span()), self.field(name), format!("{what}{hint}"));
        }
    }

    /// Reports a required key that is absent.
    pub(crate) fn missing(&self, key: &str, what: &str, d: &mut Diag<'_>) {
        d.error(
            self.span.clone(),
            self.field(key),
            format!("missing required key `{key}` ({what})"),
        );
    }

    pub(crate) fn str(&self, key: &str, d: &mut Diag<'_>) -> Option<Located<String>> {
        self.get(key).and_then(|v| as_str(v, &self.field(key), d))
    }

    pub(crate) fn req_str(
        &self,
        key: &str,
        what: &str,
        d: &mut Diag<'_>,
    ) -> Option<Located<String>> {
        if !self.has(key) {
            self.missing(key, what, d);
            return None;
        }
        self.str(key, d)
    }

    pub(crate) fn num(&self, key: &str, d: &mut Diag<'_>) -> Option<Located<f64>> {
        self.get(key).and_then(|v| as_num(v, &self.field(key), d))
    }

    pub(crate) fn req_num(&self, key: &str, what: &str, d: &mut Diag<'_>) -> Option<Located<f64>> {
        if !self.has(key) {
            self.missing(key, what, d);
            return None;
        }
        self.num(key, d)
    }

    pub(crate) fn int(&self, key: &str, d: &mut Diag<'_>) -> Option<Located<i64>> {
        self.get(key).and_then(|v| as_int(v, &self.field(key), d))
    }

    pub(crate) fn req_int(&self, key: &str, what: &str, d: &mut Diag<'_>) -> Option<Located<i64>> {
        if !self.has(key) {
            self.missing(key, what, d);
            return None;
        }
        self.int(key, d)
    }

    pub(crate) fn bool(&self, key: &str, d: &mut Diag<'_>) -> Option<Located<bool>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(Located {
                value: *b,
                span: v.span(),
            }),
            other => {
                type_error(v, &self.field(key), "true or false", other, d);
                None
            }
        }
    }

    /// An integer in `min..=max`; `None` when absent or wrong (reported).
    pub(crate) fn int_in(
        &self,
        key: &str,
        min: i64,
        max: i64,
        d: &mut Diag<'_>,
    ) -> Option<Located<i64>> {
        let v = self.int(key, d)?;
        if v.value < min || v.value > max {
            d.error(
                Some(v.span.clone()),
                self.field(key),
                format!("must be between {min} and {max}, got {}", v.value),
            );
            return None;
        }
        Some(v)
    }

    /// An array of strings.
    pub(crate) fn str_array(
        &self,
        key: &str,
        d: &mut Diag<'_>,
    ) -> Option<Located<Vec<Located<String>>>> {
        let v = self.get(key)?;
        let field = self.field(key);
        let DeValue::Array(items) = v.get_ref() else {
            type_error(v, &field, "an array of strings", v.get_ref(), d);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match as_str(item, &format!("{field}[{i}]"), d) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(Located {
            value: out,
            span: v.span(),
        })
    }
}

fn type_error(v: &Value<'_>, field: &str, expected: &str, found: &DeValue<'_>, d: &mut Diag<'_>) {
    let shown = match found {
        DeValue::String(s) => format!("string \"{}\"", s.escape_debug()),
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        other => other.type_str().to_string(),
    };
    d.error(
        Some(v.span()),
        field,
        format!("expected {expected}, found {shown}"),
    );
}

pub(crate) fn as_str(v: &Value<'_>, field: &str, d: &mut Diag<'_>) -> Option<Located<String>> {
    match v.get_ref() {
        DeValue::String(s) => Some(Located {
            value: s.to_string(),
            span: v.span(),
        }),
        other => {
            type_error(v, field, "a string", other, d);
            None
        }
    }
}

/// A number: a TOML integer or float. NaN and ±inf come out as such (TOML allows them); callers
/// check finiteness where it matters.
pub(crate) fn as_num(v: &Value<'_>, field: &str, d: &mut Diag<'_>) -> Option<Located<f64>> {
    let parsed = match v.get_ref() {
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(|n| n as f64),
        other => {
            type_error(v, field, "a number", other, d);
            return None;
        }
    };
    match parsed {
        Some(value) => Some(Located {
            value,
            span: v.span(),
        }),
        None => {
            d.error(Some(v.span()), field, "number out of range");
            None
        }
    }
}

pub(crate) fn as_int(v: &Value<'_>, field: &str, d: &mut Diag<'_>) -> Option<Located<i64>> {
    match v.get_ref() {
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(value) => Some(Located {
                value,
                span: v.span(),
            }),
            Err(_) => {
                d.error(Some(v.span()), field, "integer out of range");
                None
            }
        },
        other => {
            type_error(v, field, "an integer", other, d);
            None
        }
    }
}

/// The tables of an array of tables (`[[station]]`). A single `[station]` table or any other
/// type is reported.
pub(crate) fn table_array<'a, 'i>(
    root: &Table<'a, 'i>,
    key: &str,
    d: &mut Diag<'_>,
) -> Vec<(&'a DeTable<'i>, Range<usize>)> {
    let Some(v) = root.get(key) else {
        return Vec::new();
    };
    match v.get_ref() {
        DeValue::Array(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.get_ref() {
                    DeValue::Table(t) => out.push((t, item.span())),
                    other => type_error(item, &format!("{key}[{i}]"), "a table", other, d),
                }
            }
            out
        }
        DeValue::Table(_) => {
            d.error(
                Some(v.span()),
                key,
                format!("write each entry as `[[{key}]]` (an array of tables), not `[{key}]`"),
            );
            Vec::new()
        }
        other => {
            type_error(v, key, &format!("`[[{key}]]` tables"), other, d);
            Vec::new()
        }
    }
}

/// A sub-table (`[grid]`), or `None` if absent or not a table (reported).
pub(crate) fn sub_table<'a, 'i>(
    root: &Table<'a, 'i>,
    key: &str,
    d: &mut Diag<'_>,
) -> Option<Table<'a, 'i>> {
    let v = root.get(key)?;
    match v.get_ref() {
        DeValue::Table(t) => Some(Table::new(t, Some(v.span()), key.to_string())),
        other => {
            type_error(v, key, &format!("a `[{key}]` table"), other, d);
            None
        }
    }
}
