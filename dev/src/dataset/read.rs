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

pub type Row = (usize, Vec<Value>);

pub fn read_rows(
    path: &Path,
    format: Format,
    delimiter: u8,
    columns: &[&str],
) -> Result<Vec<Row>, DataError> {
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
            let records = lines.map(|l| l.split('\t').map(str::to_owned).collect());
            table_rows(path, header, records, columns)
        }
        Format::Csv => {
            let mut records = csv_records(&text, delimiter).into_iter();
            let header = records.next().unwrap_or_default();
            table_rows(path, header, records, columns)
        }
        Format::Jsonl => jsonl_rows(path, &text, columns),
    }
}

fn table_rows(
    path: &Path,
    header: Vec<String>,
    records: impl Iterator<Item = Vec<String>>,
    columns: &[&str],
) -> Result<Vec<Row>, DataError> {
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
    let (mut rows, mut short) = (Vec::new(), Vec::new());
    for (n, record) in records.enumerate().map(|(i, r)| (i + 2, r)) {
        if record.is_empty() || record == [""] {
            continue;
        }
        if record.len() <= widest {
            short.push(n);
            continue;
        }
        rows.push((
            n,
            at.iter().map(|&i| Value::Text(record[i].clone())).collect(),
        ));
    }
    if !short.is_empty() {
        return Err(DataError::new(
            path,
            format!("{} row(s) have fewer fields than the header", short.len()),
            "fix them",
        )
        .at(short));
    }
    Ok(rows)
}

/// RFC 4180 records as Python's `csv` reads them (excel dialect): a field that
/// starts with `"` is quoted (`""` is a quote; text after the closing quote is
/// kept); quotes inside an unquoted field are literal; a record ends at a
/// newline outside quotes (`\r\n`, `\n` or `\r`). A blank line is an empty record.
fn csv_records(text: &str, delimiter: u8) -> Vec<Vec<String>> {
    let delimiter = char::from(delimiter);
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
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
                records.push(std::mem::take(&mut record));
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
        records.push(record);
    }
    records
}

fn jsonl_rows(path: &Path, text: &str, columns: &[&str]) -> Result<Vec<Row>, DataError> {
    let (mut rows, mut bad, mut lacking) = (Vec::new(), Vec::new(), Vec::new());
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
            Some(values) => rows.push((n, values)),
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
    Ok(rows)
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
