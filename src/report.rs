//! The one-shot `scan` report: one row per target, as a table or JSON, and the exit code.

use serde::Serialize;

use crate::evaluate::Status;
use crate::snapshot::Snapshot;

/// Exit codes of `scan`.
pub const EXIT_PASS: i32 = 0;
pub const EXIT_FAIL: i32 = 1;
pub const EXIT_UNKNOWN: i32 = 2;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub account: String,
    pub name: String,
    pub region: String,
    pub verdict: Status,
    pub message: String,
    pub key_ids: Vec<String>,
}

/// Rows in target order. A target whose scan failed is UNKNOWN with the error as message.
pub fn rows(snapshot: &Snapshot) -> Vec<Row> {
    snapshot
        .targets
        .iter()
        .map(|target| {
            let account = snapshot.accounts.get(target.account);
            let (verdict, message, key_ids) = match (&target.verdict, &target.last_error) {
                (Some(v), None) if target.last_scan_ok => (
                    v.status,
                    v.message.clone(),
                    v.matching_key_ids()
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                ),
                (_, Some(e)) => (
                    Status::Unknown,
                    format!("scan failed: {e}; {}", e.hint()),
                    Vec::new(),
                ),
                _ => (Status::Unknown, "not scanned".to_owned(), Vec::new()),
            };
            Row {
                account: account.map_or("unknown", |a| a.label()).to_owned(),
                name: account.and_then(|a| a.name.clone()).unwrap_or_default(),
                region: target.region.0.clone(),
                verdict,
                message,
                key_ids,
            }
        })
        .collect()
}

/// 2 when any verdict is UNKNOWN, else 1 when any is FAIL, else 0.
pub fn exit_code(rows: &[Row]) -> i32 {
    if rows.iter().any(|r| r.verdict == Status::Unknown) {
        EXIT_UNKNOWN
    } else if rows.iter().any(|r| r.verdict == Status::Fail) {
        EXIT_FAIL
    } else {
        EXIT_PASS
    }
}

pub fn render_json(rows: &[Row]) -> String {
    // Serializing plain strings and vectors cannot fail.
    serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".to_owned())
}

pub fn render_table(rows: &[Row]) -> String {
    let header = ["ACCOUNT", "NAME", "REGION", "VERDICT", "KEYS", "MESSAGE"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.account.clone(),
                if r.name.is_empty() {
                    "-".to_owned()
                } else {
                    r.name.clone()
                },
                r.region.clone(),
                r.verdict.as_str().to_owned(),
                if r.key_ids.is_empty() {
                    "-".to_owned()
                } else {
                    r.key_ids.join(",")
                },
                r.message.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push_line = |fields: Vec<&str>| {
        let mut line = String::new();
        for (i, field) in fields.iter().enumerate() {
            if i + 1 == fields.len() {
                line.push_str(field);
            } else {
                line.push_str(&format!("{field:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push_line(header.to_vec());
    for row in &cells {
        push_line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(verdict: Status) -> Row {
        Row {
            account: "123456789012".into(),
            name: "prod".into(),
            region: "us-east-1".into(),
            verdict,
            message: "m".into(),
            key_ids: vec!["k1".into()],
        }
    }

    #[test]
    fn exit_code_prefers_unknown_over_fail() {
        assert_eq!(exit_code(&[row(Status::Pass)]), 0);
        assert_eq!(exit_code(&[row(Status::Pass), row(Status::Fail)]), 1);
        assert_eq!(exit_code(&[row(Status::Fail), row(Status::Unknown)]), 2);
        assert_eq!(exit_code(&[]), 0);
    }

    #[test]
    fn table_has_a_header_and_aligned_rows() {
        let t = render_table(&[row(Status::Pass), row(Status::Unknown)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ACCOUNT"));
        assert_eq!(lines[1].find("PASS"), lines[0].find("VERDICT"));
        assert!(lines[2].contains("UNKNOWN"));
    }

    #[test]
    fn json_uses_uppercase_verdicts() {
        let j = render_json(&[row(Status::Fail)]);
        let v: serde_json::Value = serde_json::from_str(&j).expect("json");
        assert_eq!(v[0]["verdict"], "FAIL");
        assert_eq!(v[0]["key_ids"][0], "k1");
    }
}
