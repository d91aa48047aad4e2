//! CloudSploit-compatible `scan` output: the result shape of CloudSploit's JSON and CSV
//! collectors for its `kmsAppTierCmk` plugin, and its `--exit-code` rule. Pure rendering.

use serde::Serialize;

use crate::evaluate::Status;
use crate::report::Row;

/// The plugin key (`--plugin kmsAppTierCmk`) and its metadata, as CloudSploit spells them.
pub const PLUGIN: &str = "kmsAppTierCmk";
pub const CATEGORY: &str = "KMS";
pub const TITLE: &str = "App-Tier KMS Customer Master Key (CMK)";
pub const DESCRIPTION: &str = "Ensures that there is one Amazon KMS Customer Master Key (CMK) present in the account for App-Tier resources.";

/// CloudSploit's result statuses (0 OK, 1 WARN, 2 FAIL, 3 UNKNOWN; this plugin never warns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CloudSploitStatus {
    Ok,
    Fail,
    Unknown,
}

impl CloudSploitStatus {
    pub fn from_verdict(status: Status) -> CloudSploitStatus {
        match status {
            Status::Pass => CloudSploitStatus::Ok,
            Status::Fail => CloudSploitStatus::Fail,
            Status::Unknown => CloudSploitStatus::Unknown,
        }
    }

    /// CloudSploit's numeric status, which `--exit-code` returns.
    pub fn code(self) -> i32 {
        match self {
            CloudSploitStatus::Ok => 0,
            CloudSploitStatus::Fail => 2,
            CloudSploitStatus::Unknown => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloudSploitStatus::Ok => "OK",
            CloudSploitStatus::Fail => "FAIL",
            CloudSploitStatus::Unknown => "UNKNOWN",
        }
    }
}

/// One result, with CloudSploit's JSON fields in its order, plus the account (CloudSploit
/// scans one account per run; this exporter many).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CloudSploitResult {
    pub plugin: &'static str,
    pub category: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    /// CloudSploit reports region-level results of this plugin as "N/A".
    pub resource: String,
    pub region: String,
    pub status: CloudSploitStatus,
    pub message: String,
    pub account: String,
}

/// One result per target, in target order.
pub fn results(rows: &[Row]) -> Vec<CloudSploitResult> {
    rows.iter()
        .map(|row| CloudSploitResult {
            plugin: PLUGIN,
            category: CATEGORY,
            title: TITLE,
            description: DESCRIPTION,
            resource: "N/A".to_owned(),
            region: row.region.clone(),
            status: CloudSploitStatus::from_verdict(row.verdict),
            message: row.message.clone(),
            account: row.account.clone(),
        })
        .collect()
}

/// `--exit-code`: the worst status (0 OK, 2 FAIL, 3 UNKNOWN); 0 without results.
pub fn exit_code(rows: &[Row]) -> i32 {
    rows.iter()
        .map(|r| CloudSploitStatus::from_verdict(r.verdict).code())
        .max()
        .unwrap_or(0)
}

/// A JSON array, indented by two spaces like CloudSploit's `--json`.
pub fn render_json(results: &[CloudSploitResult]) -> String {
    // Serializing plain strings cannot fail.
    serde_json::to_string_pretty(results).unwrap_or_else(|_| "[]".to_owned())
}

/// CSV like CloudSploit's `--csv`: a header line, then one line per result; commas in the
/// description and message become spaces (CloudSploit's `commaSafe`), other special cells are
/// quoted. `account` is an extra last column.
pub fn render_csv(results: &[CloudSploitResult]) -> String {
    let mut out =
        String::from("category,title,description,resource,region,statusWord,message,account\n");
    for r in results {
        let cells = [
            cell(r.category),
            cell(r.title),
            cell(&comma_safe(r.description)),
            cell(&r.resource),
            cell(&r.region),
            cell(r.status.as_str()),
            cell(&comma_safe(&r.message)),
            cell(&r.account),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

fn comma_safe(text: &str) -> String {
    text.replace(',', " ")
}

fn cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: Status, message: &str) -> Row {
        Row {
            account: "123456789012".into(),
            name: "prod".into(),
            region: "us-east-1".into(),
            verdict: status,
            message: message.into(),
            key_ids: vec![],
        }
    }

    #[test]
    fn statuses_map_to_cloudsploit_words() {
        let r = results(&[
            row(Status::Pass, "ok"),
            row(Status::Fail, "no"),
            row(Status::Unknown, "?"),
        ]);
        let words: Vec<&str> = r.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(words, vec!["OK", "FAIL", "UNKNOWN"]);
        assert_eq!(r[0].plugin, "kmsAppTierCmk");
        assert_eq!(r[0].resource, "N/A");
    }

    #[test]
    fn exit_code_is_the_worst_cloudsploit_status() {
        assert_eq!(exit_code(&[]), 0);
        assert_eq!(exit_code(&[row(Status::Pass, "")]), 0);
        assert_eq!(
            exit_code(&[row(Status::Pass, ""), row(Status::Fail, "")]),
            2
        );
        assert_eq!(
            exit_code(&[row(Status::Unknown, ""), row(Status::Fail, "")]),
            3
        );
    }

    #[test]
    fn json_has_cloudsploit_fields_in_order() {
        let j = render_json(&results(&[row(Status::Fail, "none")]));
        let keys: Vec<&str> = j
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
            .collect();
        assert_eq!(
            keys,
            vec![
                "plugin",
                "category",
                "title",
                "description",
                "resource",
                "region",
                "status",
                "message",
                "account"
            ]
        );
        let v: serde_json::Value = serde_json::from_str(&j).expect("json");
        assert_eq!(v[0]["status"], "FAIL");
    }

    #[test]
    fn csv_replaces_commas_like_cloudsploit_and_quotes_the_rest() {
        let csv = render_csv(&results(&[row(Status::Unknown, "a, b \"c\"")]));
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "category,title,description,resource,region,statusWord,message,account"
        );
        assert_eq!(
            lines[1],
            "KMS,App-Tier KMS Customer Master Key (CMK),Ensures that there is one Amazon KMS Customer Master Key (CMK) present in the account for App-Tier resources.,N/A,us-east-1,UNKNOWN,\"a  b \"\"c\"\"\",123456789012"
        );
    }
}
