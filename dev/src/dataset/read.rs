//! Rows of a table in any of the three formats, as `(line, values)` with one
//! value per asked column. Line numbers are what the trainer's twin reports:
//! 1-based records counting the header (blank lines count, are skipped).

use std::path::Path;

use super::config::Format;
use super::DataError;

/// A cell: a string, or a list of strings (a JSON array: categories).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    List(Vec<String>),
}

impl Value {
    /// The cell as text (a list reads as empty: only categories take lists).
    pub fn text(&self) -> &str {
        match self {
            Value::Text(t) => t,
            Value::List(_) => "",
        }
    }
}

/// Calls `row(line, values)` for every record of the table at `path`, one
/// value per asked column, without holding more than one record besides the
/// file's text (the trainer's twin streams too). Errors of the whole file
/// (missing columns first, then short records or lines that are not JSON)
/// come after the rows before them were passed on: a caller that gets one
/// keeps nothing.
pub fn for_each_row(
    path: &Path,
    format: Format,
    delimiter: u8,
    columns: &[&str],
    mut row: impl FnMut(usize, Vec<Value>),
) -> Result<(), DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        DataError::new(
            path,
            format!("cannot read it: {e}"),
            "check `root` and `file` in dataset.json (ml-100k: run scripts/fetch-assets)",
        )
    })?;
    match format {
        Format::Atomic => {
            let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
            let header: Vec<String> = lines
                .next()
                .unwrap_or("")
                .split('\t')
                .map(|h| h.split(':').next().unwrap_or("").to_owned())
                .collect();
            let mut table = Table::new(path, &header, columns)?;
            for (i, line) in lines.enumerate() {
                let record: Vec<&str> = line.split('\t').collect();
                table.record(i + 2, &record, &mut row);
            }
            table.finish()
        }
        Format::Csv => {
            let mut table: Option<Table> = None;
            let mut n = 0;
            let mut fail = None;
            each_csv_record(&text, delimiter, |record| {
                n += 1;
                if fail.is_some() {
                    return;
                }
                match &mut table {
                    Some(t) => t.record(n, &record, &mut row),
                    None => match Table::new(path, &record, columns) {
                        Ok(t) => table = Some(t),
                        Err(e) => fail = Some(e),
                    },
                }
            });
            match (fail, table) {
                (Some(e), _) => Err(e),
                (None, Some(t)) => t.finish(),
                (None, None) => Table::new(path, &[], columns)?.finish(),
            }
        }
        Format::Jsonl => jsonl_rows(path, &text, columns, row),
    }
}

/// The asked columns' places in a header, and the records too short to have them.
struct Table<'p> {
    path: &'p Path,
    at: Vec<usize>,
    widest: usize,
    short: Vec<usize>,
}

impl<'p> Table<'p> {
    fn new(path: &'p Path, header: &[String], columns: &[&str]) -> Result<Self, DataError> {
        let gone: Vec<String> = columns
            .iter()
            .filter(|c| !header.iter().any(|h| h == *c))
            .map(|c| format!("'{c}'"))
            .collect();
        if !gone.is_empty() {
            return Err(DataError::new(
                path,
                format!("no column {} (the header has {header:?})", gone.join(", ")),
                "map the right names in dataset.json",
            )
            .at(vec![1]));
        }
        let at: Vec<usize> = columns
            .iter()
            .map(|c| header.iter().position(|h| h == c).unwrap_or(0))
            .collect();
        let widest = at.iter().copied().max().unwrap_or(0);
        Ok(Self {
            path,
            at,
            widest,
            short: Vec::new(),
        })
    }

    /// Passes record `n` on (a blank one is skipped, a short one counted).
    fn record<S: AsRef<str>>(
        &mut self,
        n: usize,
        record: &[S],
        row: &mut impl FnMut(usize, Vec<Value>),
    ) {
        if record.is_empty() || (record.len() == 1 && record[0].as_ref().is_empty()) {
            return;
        }
        if record.len() <= self.widest {
            self.short.push(n);
            return;
        }
        row(
            n,
            self.at
                .iter()
                .map(|&i| Value::Text(record[i].as_ref().to_owned()))
                .collect(),
        );
    }

    fn finish(self) -> Result<(), DataError> {
        if self.short.is_empty() {
            return Ok(());
        }
        Err(DataError::new(
            self.path,
            format!(
                "{} row(s) have fewer fields than the header",
                self.short.len()
            ),
            "fix them",
        )
        .at(self.short))
    }
}

/// RFC 4180 records as Python's `csv` reads them (excel dialect): a field that
/// starts with `"` is quoted (`""` is a quote; text after the closing quote is
/// kept); quotes inside an unquoted field are literal; a record ends at a
/// newline outside quotes (`\r\n`, `\n` or `\r`). A blank line is an empty record.
fn each_csv_record(text: &str, delimiter: u8, mut each: impl FnMut(Vec<String>)) {
    let delimiter = char::from(delimiter);
    let (mut record, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut at_start, mut any) = (false, true, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        any = true;
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if at_start => {
                quoted = true;
                at_start = false;
            }
            c if c == delimiter => {
                record.push(std::mem::take(&mut field));
                at_start = true;
            }
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                if !(record.is_empty() && field.is_empty() && at_start) {
                    record.push(std::mem::take(&mut field));
                }
                each(std::mem::take(&mut record));
                at_start = true;
                any = false;
            }
            c => {
                field.push(c);
                at_start = false;
            }
        }
    }
    if any {
        record.push(field);
        each(record);
    }
}

fn jsonl_rows(
    path: &Path,
    text: &str,
    columns: &[&str],
    mut row: impl FnMut(usize, Vec<Value>),
) -> Result<(), DataError> {
    let (mut bad, mut lacking) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(serde_json::Value::Object(obj)) = serde_json::from_str(line) else {
            bad.push(n);
            continue;
        };
        let values: Option<Vec<Value>> = columns
            .iter()
            .map(|c| obj.get(*c).map(json_value))
            .collect();
        match values {
            Some(values) => row(n, values),
            None => lacking.push(n),
        }
    }
    if !bad.is_empty() {
        return Err(DataError::new(
            path,
            format!("{} line(s) are not a JSON object", bad.len()),
            "one per line",
        )
        .at(bad));
    }
    if !lacking.is_empty() {
        return Err(DataError::new(
            path,
            format!("{} line(s) lack a mapped key {columns:?}", lacking.len()),
            "add it or remap",
        )
        .at(lacking));
    }
    Ok(())
}

/// A JSON value as the trainer's `json_value` reads it: strings as they are,
/// numbers as written, null as empty, a list as a list of strings.
fn json_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Array(items) => Value::List(
            items
                .iter()
                .map(|x| json_value(x).text().to_owned())
                .collect(),
        ),
        _ => Value::Text(json_text(v)),
    }
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => b.to_string(),
        // Integers print as integers, floats with a decimal point (Python's repr of
        // the same float for everyday values).
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e16 => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}
