//! Who may do what: the authorization rule, from a verified token's `sub` and scopes. Pure
//! logic, so every case is a unit test.
//!
//! A caller acts for the user whose `userId` is its token's `sub`. Two scopes lift that
//! limit: `purchases:write:any` (buy for any user, e.g. a back-office service) and
//! `purchases:read:any` (read any user's history, e.g. support tooling).

use std::{collections::BTreeSet, fmt};

use serde::Deserialize;

/// Buy for any user, not only the token's subject.
pub const SCOPE_WRITE_ANY: &str = "purchases:write:any";
/// Read any user's purchases, not only the token's subject's.
pub const SCOPE_READ_ANY: &str = "purchases:read:any";

/// The scopes a token grants: the standard `scope` claim (a space-separated string, RFC 8693
/// and RFC 9068) and the `scp` claim some providers send instead (an array at Okta, a
/// space-separated string at Azure AD), taken together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(BTreeSet<String>);

/// `scp` as either provider writes it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ScopeList {
    Words(String),
    List(Vec<String>),
}

impl Scopes {
    pub fn from_claims(scope: Option<&str>, scp: Option<&ScopeList>) -> Self {
        let mut scopes = BTreeSet::new();
        let words = |text: &str| {
            text.split_ascii_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        if let Some(scope) = scope {
            scopes.extend(words(scope));
        }
        match scp {
            Some(ScopeList::Words(text)) => scopes.extend(words(text)),
            Some(ScopeList::List(list)) => scopes.extend(list.iter().flat_map(|s| words(s))),
            None => {}
        }
        Self(scopes)
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.0.contains(scope)
    }
}

/// The holder of a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: the `userId` this caller is.
    pub subject: String,
    pub scopes: Scopes,
}

/// Whom a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is disabled (`--auth-disabled`): anyone, as any user.
    Anyone,
    /// A caller with a verified token.
    Token(Principal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Buy,
    Read,
}

impl Action {
    /// The scope that allows this action for every user.
    pub fn any_user_scope(self) -> &'static str {
        match self {
            Action::Buy => SCOPE_WRITE_ANY,
            Action::Read => SCOPE_READ_ANY,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Buy => "buy for",
            Action::Read => "read the purchases of",
        }
    }
}

/// A valid token that may not act for this user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub action: Action,
    pub subject: String,
    pub user_id: String,
}

impl Refusal {
    pub fn needed_scope(&self) -> &'static str {
        self.action.any_user_scope()
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the token's subject {:?} may not {} userId {:?}: that needs scope {}",
            self.subject,
            self.action.verb(),
            self.user_id,
            self.needed_scope()
        )
    }
}

impl Caller {
    /// Whether this caller may `action` for `user_id`: its own `sub`, or any user with the
    /// action's any-user scope.
    pub fn may(&self, action: Action, user_id: &str) -> Result<(), Refusal> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::Token(principal)
                if principal.subject == user_id
                    || principal.scopes.contains(action.any_user_scope()) =>
            {
                Ok(())
            }
            Caller::Token(principal) => Err(Refusal {
                action,
                subject: principal.subject.clone(),
                user_id: user_id.to_string(),
            }),
        }
    }

    /// The userId that a read which cannot name one (the seed routes by username) must be
    /// narrowed to: the caller's own `sub`, or `None` when it may read every user's purchases.
    /// A username is a display name that anyone may choose, not an identity, so it cannot be
    /// authorized on its own.
    pub fn readable_user_id(&self) -> Option<&str> {
        match self {
            Caller::Token(principal) if !principal.scopes.contains(SCOPE_READ_ANY) => {
                Some(principal.subject.as_str())
            }
            _ => None,
        }
    }

    /// Whether a stored purchase of `user_id` may be shown to this caller.
    pub fn may_read(&self, user_id: &str) -> bool {
        self.may(Action::Read, user_id).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(subject: &str, scope: &str) -> Caller {
        Caller::Token(Principal {
            subject: subject.into(),
            scopes: Scopes::from_claims(Some(scope), None),
        })
    }

    #[test]
    fn scope_is_space_separated_and_scp_may_be_a_list_or_a_string() {
        let scopes = Scopes::from_claims(
            Some(" openid  purchases:read:any\tprofile "),
            Some(&ScopeList::List(vec!["purchases:write:any".into()])),
        );
        for scope in [
            "openid",
            "purchases:read:any",
            "profile",
            "purchases:write:any",
        ] {
            assert!(scopes.contains(scope), "{scope}");
        }
        assert!(!scopes.contains(""));
        assert!(!scopes.contains("purchases"));

        let azure = Scopes::from_claims(None, Some(&ScopeList::Words("a b".into())));
        assert!(azure.contains("a") && azure.contains("b"));
        assert_eq!(Scopes::from_claims(None, None), Scopes::default());
    }

    #[test]
    fn scp_parses_from_either_json_form() {
        let list: ScopeList = serde_json::from_str(r#"["a","b"]"#).unwrap();
        assert_eq!(list, ScopeList::List(vec!["a".into(), "b".into()]));
        let words: ScopeList = serde_json::from_str(r#""a b""#).unwrap();
        assert_eq!(words, ScopeList::Words("a b".into()));
        assert!(serde_json::from_str::<ScopeList>("7").is_err());
    }

    #[test]
    fn scopes_are_matched_exactly() {
        // Neither a prefix, a case variant nor a similar-looking scope grants anything.
        for near_miss in [
            "purchases:write",
            "PURCHASES:WRITE:ANY",
            "purchases:write:any2",
            "purchases:*",
        ] {
            let c = caller("alice", near_miss);
            assert!(c.may(Action::Buy, "bob").is_err(), "{near_miss}");
        }
    }

    #[test]
    fn a_caller_acts_for_its_own_subject_only() {
        let alice = caller("alice", "openid");
        assert_eq!(alice.may(Action::Buy, "alice"), Ok(()));
        assert_eq!(alice.may(Action::Read, "alice"), Ok(()));
        let refused = alice.may(Action::Buy, "bob").unwrap_err();
        assert_eq!(refused.needed_scope(), SCOPE_WRITE_ANY);
        assert_eq!(
            refused.to_string(),
            r#"the token's subject "alice" may not buy for userId "bob": that needs scope purchases:write:any"#
        );
        let refused = alice.may(Action::Read, "bob").unwrap_err();
        assert_eq!(refused.needed_scope(), SCOPE_READ_ANY);
        // userIds are compared exactly.
        assert!(alice.may(Action::Buy, "Alice").is_err());
        assert!(alice.may(Action::Buy, "alice ").is_err());
    }

    #[test]
    fn each_any_user_scope_allows_its_own_action_only() {
        let writer = caller("svc", SCOPE_WRITE_ANY);
        assert_eq!(writer.may(Action::Buy, "bob"), Ok(()));
        assert!(writer.may(Action::Read, "bob").is_err());
        assert_eq!(writer.readable_user_id(), Some("svc"));

        let reader = caller("support", SCOPE_READ_ANY);
        assert_eq!(reader.may(Action::Read, "bob"), Ok(()));
        assert!(reader.may(Action::Buy, "bob").is_err());
        assert_eq!(reader.readable_user_id(), None);
        assert!(reader.may_read("anyone"));
    }

    #[test]
    fn without_authentication_anyone_acts_for_anyone() {
        assert_eq!(Caller::Anyone.may(Action::Buy, "bob"), Ok(()));
        assert_eq!(Caller::Anyone.may(Action::Read, "bob"), Ok(()));
        assert_eq!(Caller::Anyone.readable_user_id(), None);
    }

    #[test]
    fn reads_by_username_are_narrowed_to_the_callers_own_user_id() {
        assert_eq!(caller("alice", "").readable_user_id(), Some("alice"));
    }
}
