//! Config errors that say where the problem is: file, document, field.

use std::fmt;
use std::path::PathBuf;

/// Which document an error belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRef {
    /// The file the document came from (or a label such as `<inline>`).
    pub file: PathBuf,
    /// 1-based position of the document in its file; 0 when the error is about
    /// the whole file.
    pub index: usize,
    /// `Kind/namespace/name` when it could be read.
    pub object: Option<String>,
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.index > 0 {
            write!(f, ": document {}", self.index)?;
        }
        if let Some(obj) = &self.object {
            write!(f, " ({obj})")?;
        }
        Ok(())
    }
}

/// One problem in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub document: DocumentRef,
    /// Dotted path of the offending field (`spec.endpoints[1].address`), empty
    /// when the whole document or file is wrong.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.document)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a config; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} config error{}:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors for one document while it is checked.
pub(crate) struct Problems<'a> {
    pub doc: &'a DocumentRef,
    pub out: &'a mut Vec<ConfigError>,
}

impl Problems<'_> {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out.push(ConfigError {
            document: self.doc.clone(),
            field: field.into(),
            message: message.into(),
        });
    }
}
