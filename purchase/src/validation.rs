//! Parsing untrusted purchase input into domain types. Each error names the offending field,
//! so an API client can tell exactly what to fix.

use serde_json::{Map, Value};

use crate::money::Price;

pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_USER_ID_CHARS: usize = 64;

/// What is wrong with one field of the input (or with the input as a whole: `field` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", match .field { Some(f) => format!("{f}: {}", .message), None => .message.clone() })]
pub struct ValidationError {
    pub field: Option<String>,
    pub message: String,
}

impl ValidationError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    pub fn body(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: message.into(),
        }
    }
}

/// A display name: 1 to 64 characters of letters, digits, spaces and `.-_'`, no surrounding
/// spaces. Unicode letters are welcome (José, Zoë); control characters and markup are not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

impl Username {
    pub fn parse(value: &str) -> Result<Self, String> {
        let chars = value.chars().count();
        if chars == 0 {
            return Err("must not be empty".into());
        }
        if chars > MAX_NAME_CHARS {
            return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
        }
        if value.trim() != value {
            return Err("must not start or end with whitespace".into());
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_alphanumeric() || matches!(c, ' ' | '.' | '-' | '_' | '\'')))
        {
            return Err(format!(
                "contains {bad:?}; allowed are letters, digits, spaces and . - _ '"
            ));
        }
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user id: 1 to 64 ASCII letters, digits, `.`, `-` or `_`. It is the Kafka key and a URL
/// path segment, so it stays plain ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        if value.len() > MAX_USER_ID_CHARS {
            return Err(format!("must be at most {MAX_USER_ID_CHARS} characters"));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(format!(
                "contains {bad:?}; allowed are ASCII letters, digits, . - _"
            ));
        }
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_conversions {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                Self::parse(&value)
            }
        }
        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.0
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_newtype_conversions!(Username);
string_newtype_conversions!(UserId);

/// A validated purchase as a client sent it, before the gateway gives it an id and a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPurchase {
    pub username: Username,
    pub user_id: UserId,
    pub price: Price,
}

/// Which spellings of the user id field a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserIdField {
    /// `userId` only: the current API.
    Current,
    /// `userId` or the seed services' `userid` (cm-server's `/buy`), never both.
    AllowLegacy,
}

impl NewPurchase {
    /// Parses a JSON body: an object with exactly `username`, `userId` and `price`.
    pub fn from_json(body: &Value, user_id_field: UserIdField) -> Result<Self, ValidationError> {
        let Value::Object(object) = body else {
            return Err(ValidationError::body(format!(
                "body must be a JSON object, got {}",
                json_type(body)
            )));
        };
        let allowed: &[&str] = match user_id_field {
            UserIdField::Current => &["username", "userId", "price"],
            UserIdField::AllowLegacy => &["username", "userId", "userid", "price"],
        };
        if let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ValidationError::field(
                unknown,
                format!("unknown field; allowed fields are {}", allowed.join(", ")),
            ));
        }

        let username = required_string(object, "username")?;
        let username =
            Username::parse(username).map_err(|m| ValidationError::field("username", m))?;

        let id_key = match (object.contains_key("userId"), object.contains_key("userid")) {
            (true, true) => {
                return Err(ValidationError::field(
                    "userid",
                    "send either userId or the legacy userid, not both",
                ))
            }
            (false, true) => "userid",
            _ => "userId",
        };
        let user_id = required_string(object, id_key)?;
        let user_id = UserId::parse(user_id).map_err(|m| ValidationError::field(id_key, m))?;

        let price = match object.get("price") {
            None | Some(Value::Null) => return Err(ValidationError::field("price", "is required")),
            Some(Value::Number(n)) => n
                .as_f64()
                .ok_or_else(|| ValidationError::field("price", "must be a finite number"))?,
            Some(other) => {
                return Err(ValidationError::field(
                    "price",
                    format!("must be a number, got {}", json_type(other)),
                ))
            }
        };
        let price =
            Price::from_f64(price).map_err(|e| ValidationError::field("price", e.to_string()))?;

        Ok(Self {
            username,
            user_id,
            price,
        })
    }
}

fn required_string<'a>(
    object: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a str, ValidationError> {
    match object.get(key) {
        None | Some(Value::Null) => Err(ValidationError::field(key, "is required")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ValidationError::field(
            key,
            format!("must be a string, got {}", json_type(other)),
        )),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field_of(body: Value) -> Option<String> {
        NewPurchase::from_json(&body, UserIdField::Current)
            .unwrap_err()
            .field
    }

    #[test]
    fn accepts_a_well_formed_purchase() {
        let p = NewPurchase::from_json(
            &json!({"username": "José García", "userId": "u-42", "price": 19.99}),
            UserIdField::Current,
        )
        .unwrap();
        assert_eq!(p.username.as_str(), "José García");
        assert_eq!(p.user_id.as_str(), "u-42");
        assert_eq!(p.price.cents(), 1999);
    }

    #[test]
    fn each_bad_field_is_named() {
        let ok = json!({"username": "ann", "userId": "1", "price": 1.5});
        let with = |k: &str, v: Value| {
            let mut b = ok.clone();
            b[k] = v;
            b
        };
        assert_eq!(
            field_of(with("username", json!(""))).as_deref(),
            Some("username")
        );
        assert_eq!(
            field_of(with("username", json!("<script>"))).as_deref(),
            Some("username")
        );
        assert_eq!(
            field_of(with("username", json!(" ann"))).as_deref(),
            Some("username")
        );
        assert_eq!(
            field_of(with("username", json!("a".repeat(65)))).as_deref(),
            Some("username")
        );
        assert_eq!(
            field_of(with("username", json!(7))).as_deref(),
            Some("username")
        );
        assert_eq!(
            field_of(with("userId", json!("a/b"))).as_deref(),
            Some("userId")
        );
        assert_eq!(
            field_of(with("userId", json!(555))).as_deref(),
            Some("userId")
        );
        assert_eq!(
            field_of(with("price", json!("12.00"))).as_deref(),
            Some("price")
        );
        assert_eq!(field_of(with("price", json!(-1))).as_deref(), Some("price"));
        assert_eq!(
            field_of(with("price", json!(1.234))).as_deref(),
            Some("price")
        );
        assert_eq!(field_of(with("extra", json!(1))).as_deref(), Some("extra"));
        assert_eq!(
            field_of(json!({"username": "ann", "price": 1})).as_deref(),
            Some("userId")
        );
        assert_eq!(field_of(json!([1, 2])), None);
    }

    #[test]
    fn legacy_userid_is_accepted_only_where_allowed_and_never_beside_user_id() {
        let legacy = json!({"username": "ann", "userid": "7", "price": 3});
        assert_eq!(field_of(legacy.clone()).as_deref(), Some("userid"));
        let p = NewPurchase::from_json(&legacy, UserIdField::AllowLegacy).unwrap();
        assert_eq!(p.user_id.as_str(), "7");
        let both = json!({"username": "ann", "userid": "7", "userId": "7", "price": 3});
        assert!(NewPurchase::from_json(&both, UserIdField::AllowLegacy).is_err());
    }
}
