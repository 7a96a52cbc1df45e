//! Diagnostics for the site file: errors and warnings with a file, line, column and field path.

use std::fmt;
use std::ops::Range;

/// One mistake (or, in [`ConfigErrors::warnings`] and [`super::SiteConfig::warnings`], one
/// warning) in a site file.
///
/// Displays as `file:line:column: field: message`, leaving out the parts that are unknown, e.g.
/// `site.toml:23:12: station "CP-07".circuit: circuit "feeder-x" is not defined (known: grid,
/// feeder-a, feeder-b)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the position refers to: the site file as given to [`super::SiteConfig::load`], a
    /// referenced file (`id_tags_file`), or `None` for text given to
    /// [`super::SiteConfig::parse`].
    pub file: Option<String>,
    /// 1-based line, if the mistake has a place in the file.
    pub line: Option<usize>,
    /// 1-based column in characters, if the mistake has a place in the file.
    pub column: Option<usize>,
    /// What is wrong, as a path: `grid.limit_a`, `circuit "feeder-a".parent`,
    /// `station "CP-07".circuit`, or `station[3].id` (0-based) where the entry has no usable id.
    /// Empty for mistakes of the whole file (unreadable, TOML syntax).
    pub field: String,
    /// What is wrong, for a human.
    pub message: String,
}

/// A warning has the same shape as an error: the file is valid, but probably not what was meant.
pub type ConfigWarning = ConfigError;

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}:")?;
        }
        if let Some(line) = self.line {
            write!(f, "{line}:")?;
            if let Some(column) = self.column {
                write!(f, "{column}:")?;
            }
        }
        if self.file.is_some() || self.line.is_some() {
            f.write_str(" ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every mistake found in a site file (never just the first), plus the warnings found on the way.
///
/// Displays one error per line, then the warnings prefixed with `warning: `, then a count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The mistakes, in file order. Never empty.
    pub errors: Vec<ConfigError>,
    /// The warnings, in file order.
    pub warnings: Vec<ConfigWarning>,
}

impl ConfigErrors {
    /// The mistakes, in file order.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    /// Number of mistakes.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Always false: a `ConfigErrors` holds at least one mistake.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Iterates over the mistakes.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    /// Sets the file name on every diagnostic that has none (the site file itself).
    pub(crate) fn with_file(mut self, file: &str) -> Self {
        for d in self.errors.iter_mut().chain(self.warnings.iter_mut()) {
            if d.file.is_none() {
                d.file = Some(file.to_string());
            }
        }
        self
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            writeln!(f, "{e}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        let n = self.errors.len();
        write!(f, "{n} error{}", if n == 1 { "" } else { "s" })?;
        if !self.warnings.is_empty() {
            let m = self.warnings.len();
            write!(f, ", {m} warning{}", if m == 1 { "" } else { "s" })?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// Maps byte offsets of one text to 1-based line and character column.
#[derive(Debug, Clone)]
pub(crate) struct LineIndex<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    /// 1-based (line, column) of byte `offset`; offsets past the end map to the end.
    pub(crate) fn locate(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let column = self.text[self.starts[line]..offset].chars().count() + 1;
        (line + 1, column)
    }
}

/// Collects errors and warnings while a site file is read.
pub(crate) struct Diag<'t> {
    index: LineIndex<'t>,
    /// (sort key, diagnostic)
    errors: Vec<(usize, ConfigError)>,
    warnings: Vec<(usize, ConfigError)>,
}

impl<'t> Diag<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        Diag {
            index: LineIndex::new(text),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn make(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> (usize, ConfigError) {
        let (line, column, key) = match span {
            Some(span) => {
                let (l, c) = self.index.locate(span.start);
                (Some(l), Some(c), span.start)
            }
            None => (None, None, usize::MAX),
        };
        (
            key,
            ConfigError {
                file: None,
                line,
                column,
                field: field.into(),
                message: message.into(),
            },
        )
    }

    /// Records an error at `span` (byte offsets into the site file).
    pub(crate) fn error(
        &mut self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let e = self.make(span, field, message);
        self.errors.push(e);
    }

    /// Records a warning at `span`.
    pub(crate) fn warn(
        &mut self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let w = self.make(span, field, message);
        self.warnings.push(w);
    }

    /// Records a diagnostic that is already located (e.g. in another file).
    pub(crate) fn error_at(&mut self, error: ConfigError) {
        self.errors.push((usize::MAX, error));
    }

    /// 1-based (line, column) of a byte offset in the site file.
    pub(crate) fn locate(&self, offset: usize) -> (usize, usize) {
        self.index.locate(offset)
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    fn sorted(mut v: Vec<(usize, ConfigError)>) -> Vec<ConfigError> {
        // Stable: diagnostics at the same place keep the order they were found in.
        v.sort_by_key(|(k, _)| *k);
        v.into_iter().map(|(_, e)| e).collect()
    }

    /// Errors (if any) and warnings, each in file order.
    pub(crate) fn finish(self) -> (Vec<ConfigError>, Vec<ConfigWarning>) {
        (Self::sorted(self.errors), Self::sorted(self.warnings))
    }
}

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = if word.chars().count() <= 4 { 1 } else { 2 };
    candidates
        .iter()
        .map(|c| (edit_distance(&word.to_ascii_lowercase(), c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
