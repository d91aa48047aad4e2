//! Error kinds shared by the scanner, the metrics and the logs.
//!
//! Every failure of an AWS call is folded into one [`ErrorKind`], the value of the `error`
//! label of `app_tier_cmk_scan_errors_total` and of the `outcome` label of
//! `app_tier_cmk_aws_requests_total`.

use std::fmt;

/// Why an AWS call (or a whole target scan) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// AWS answered with a throttling error, even after the SDK's retries.
    Throttled,
    /// The caller lacks an IAM permission, or a key policy refuses it.
    AccessDenied,
    /// The call or the target's scan ran past its time limit.
    Timeout,
    /// No answer: connection refused or reset, DNS failure, TLS failure.
    Network,
    /// Credentials for the account could not be obtained (AssumeRole refused, no credentials).
    AssumeRole,
    /// Anything else: a 5xx, an answer that could not be parsed, an unexpected error code.
    Other,
}

impl ErrorKind {
    /// Every kind, in label order.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Throttled,
        ErrorKind::AccessDenied,
        ErrorKind::Timeout,
        ErrorKind::Network,
        ErrorKind::AssumeRole,
        ErrorKind::Other,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Network => "network",
            ErrorKind::AssumeRole => "assume_role",
            ErrorKind::Other => "other",
        }
    }

    /// Classifies an AWS error code (`__type` of a JSON answer, `Code` of an XML one).
    pub fn from_aws_code(code: &str) -> ErrorKind {
        // JSON protocols may send "namespace#Code"; the code is the part after '#'.
        let code = code.rsplit('#').next().unwrap_or(code);
        match code {
            "ThrottlingException"
            | "Throttling"
            | "ThrottledException"
            | "TooManyRequestsException"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "RequestLimitExceeded"
            | "SlowDown"
            | "BandwidthLimitExceeded"
            | "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "EC2ThrottledException"
            | "PriorRequestNotComplete"
            | "TransactionInProgressException" => ErrorKind::Throttled,
            "AccessDeniedException"
            | "AccessDenied"
            | "UnauthorizedOperation"
            | "AuthorizationError"
            | "AuthorizationErrorException"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "MissingAuthenticationToken" => ErrorKind::AccessDenied,
            "RequestTimeout" | "RequestTimeoutException" => ErrorKind::Timeout,
            _ => ErrorKind::Other,
        }
    }

    /// What an operator can do about it, for log lines.
    pub fn hint(self) -> &'static str {
        match self {
            ErrorKind::Throttled => {
                "AWS throttled the call; lower scan.concurrency or raise scan.interval"
            }
            ErrorKind::AccessDenied => {
                "grant the scanner the IAM action named in `operation` (see README, IAM permissions) and check the key policy"
            }
            ErrorKind::Timeout => {
                "AWS did not answer in time; check the network or raise scan.timeout"
            }
            ErrorKind::Network => {
                "could not reach AWS; check the endpoint, proxy, DNS and network path"
            }
            ErrorKind::AssumeRole => {
                "could not get credentials for the account; check the role ARN, its trust policy and the external ID, and that the scanner may call sts:AssumeRole"
            }
            ErrorKind::Other => "unexpected answer from AWS; see the message",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed AWS call: which operation, what kind of failure, and AWS's own words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed ({kind}): {message}")]
pub struct AwsError {
    pub operation: &'static str,
    pub kind: ErrorKind,
    pub message: String,
}

impl AwsError {
    pub fn new(operation: &'static str, kind: ErrorKind, message: impl Into<String>) -> Self {
        AwsError {
            operation,
            kind,
            message: message.into(),
        }
    }

    /// What an operator can do about it; for access errors, the exact IAM action to grant.
    pub fn hint(&self) -> String {
        if self.kind != ErrorKind::AccessDenied {
            return self.kind.hint().to_owned();
        }
        match iam_action(self.operation) {
            Some(action) if action.starts_with("kms:") && action != "kms:ListKeys" && action != "kms:ListAliases" => format!(
                "grant the scanner {action} in its IAM policy, and check that the key policy does not deny it"
            ),
            Some(action) => format!("grant the scanner {action} in its IAM policy"),
            None if self.operation == "GetCallerIdentity" => {
                "sts:GetCallerIdentity needs no permission: the credentials themselves are invalid or expired".to_owned()
            }
            None => self.kind.hint().to_owned(),
        }
    }
}

/// The IAM action behind an AWS operation the exporter calls.
pub fn iam_action(operation: &str) -> Option<String> {
    let service = match operation {
        "ListKeys"
        | "ListAliases"
        | "ListResourceTags"
        | "DescribeKey"
        | "GetKeyRotationStatus" => "kms",
        "GetResources" | "GetTagKeys" => "tag",
        "AssumeRole" => "sts",
        "ListAccounts" => "organizations",
        "ListRegions" => "account",
        _ => return None,
    };
    Some(format!("{service}:{operation}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_codes_are_throttled() {
        assert_eq!(
            ErrorKind::from_aws_code("ThrottlingException"),
            ErrorKind::Throttled
        );
        assert_eq!(ErrorKind::from_aws_code("Throttling"), ErrorKind::Throttled);
        assert_eq!(
            ErrorKind::from_aws_code("com.amazonaws.kms#ThrottlingException"),
            ErrorKind::Throttled
        );
    }

    #[test]
    fn access_codes_are_access_denied() {
        assert_eq!(
            ErrorKind::from_aws_code("AccessDeniedException"),
            ErrorKind::AccessDenied
        );
        assert_eq!(
            ErrorKind::from_aws_code("ExpiredToken"),
            ErrorKind::AccessDenied
        );
    }

    #[test]
    fn unknown_codes_are_other() {
        assert_eq!(
            ErrorKind::from_aws_code("KMSInternalException"),
            ErrorKind::Other
        );
        assert_eq!(ErrorKind::from_aws_code(""), ErrorKind::Other);
    }

    #[test]
    fn access_hint_names_the_iam_action() {
        let e = AwsError::new("DescribeKey", ErrorKind::AccessDenied, "denied");
        assert!(
            e.hint().contains("kms:DescribeKey") && e.hint().contains("key policy"),
            "{}",
            e.hint()
        );
        let e = AwsError::new("GetResources", ErrorKind::AccessDenied, "denied");
        assert!(e.hint().contains("tag:GetResources"), "{}", e.hint());
        let e = AwsError::new("ListKeys", ErrorKind::Throttled, "slow");
        assert_eq!(e.hint(), ErrorKind::Throttled.hint());
    }

    #[test]
    fn labels_are_distinct() {
        let labels: std::collections::BTreeSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
    }
}
