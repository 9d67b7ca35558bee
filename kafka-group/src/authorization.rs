//! What the brokers let this client do, told before the first refused request.
//!
//! Kafka reports a client's allowed operations on a topic in Metadata v8+ when asked
//! (KIP-430, `include_topic_authorized_operations`), as a bit field indexed by the ACL
//! operation codes; a broker that does not say answers `i32::MIN`. A topic the client may
//! not even describe comes back with TOPIC_AUTHORIZATION_FAILED instead of partitions.

use std::fmt;

use kafka_protocol::ResponseError;

/// The ACL operations this project needs (their codes in Kafka's `AclOperation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Read = 3,
    Write = 4,
    Describe = 8,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Read => "Read",
            Operation::Write => "Write",
            Operation::Describe => "Describe",
        })
    }
}

/// The broker's `authorized_operations` value when it did not compute one.
pub const NOT_REPORTED: i32 = i32::MIN;

/// Which of `needed` the bit field `reported` does not allow; empty when all are allowed or
/// the broker did not report (then the first real request will tell).
pub fn missing(reported: i32, needed: &[Operation]) -> Vec<Operation> {
    if reported == NOT_REPORTED {
        return Vec::new();
    }
    needed
        .iter()
        .copied()
        .filter(|op| reported & (1 << *op as i32) == 0)
        .collect()
}

/// Errors with which a broker refuses this client's user, not the request's timing.
pub fn is_refusal(error: ResponseError) -> bool {
    matches!(
        error,
        ResponseError::TopicAuthorizationFailed
            | ResponseError::GroupAuthorizationFailed
            | ResponseError::ClusterAuthorizationFailed
            | ResponseError::TransactionalIdAuthorizationFailed
    )
}

/// `Read and Write`, for messages.
pub fn list(operations: &[Operation]) -> String {
    let names: Vec<String> = operations.iter().map(ToString::to_string).collect();
    names.join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_bits_name_the_missing_operations() {
        let describe_and_read = (1 << 8) | (1 << 3);
        assert_eq!(
            missing(describe_and_read, &[Operation::Describe, Operation::Write]),
            vec![Operation::Write]
        );
        assert!(missing(describe_and_read, &[Operation::Read, Operation::Describe]).is_empty());
    }

    #[test]
    fn a_broker_that_does_not_report_hides_nothing() {
        assert!(missing(NOT_REPORTED, &[Operation::Write]).is_empty());
    }

    #[test]
    fn authorization_errors_are_refusals_and_timing_errors_are_not() {
        assert!(is_refusal(ResponseError::TopicAuthorizationFailed));
        assert!(is_refusal(ResponseError::GroupAuthorizationFailed));
        assert!(!is_refusal(ResponseError::NotLeaderOrFollower));
        assert!(!is_refusal(ResponseError::CoordinatorLoadInProgress));
    }
}
