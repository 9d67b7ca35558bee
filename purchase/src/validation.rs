//! Parsing untrusted purchase input into domain types. Each error names the offending field,
//! so an API client can tell exactly what to fix.

use std::{borrow::Cow, collections::HashMap};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::money::Price;

pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_USER_ID_CHARS: usize = 64;

/// `Username::parse`'s character rules as an ECMA-262 regex (with `u`, as JSON Schema reads
/// `pattern`), for the OpenAPI spec: `\p{Alpha}` (Alphabetic) and `\p{N}` are exactly Rust's
/// `char::is_alphanumeric`, and only a space may not start or end. The length (1-64
/// characters) is the spec's `minLength`/`maxLength`. A test proves both agree.
pub const USERNAME_PATTERN: &str =
    r"^[\p{Alpha}\p{N}._'-](?:[\p{Alpha}\p{N} ._'-]*[\p{Alpha}\p{N}._'-])?$";

/// `UserId::parse`'s rules, length included, as a regex for the OpenAPI spec.
pub const USER_ID_PATTERN: &str = r"^[A-Za-z0-9._-]{1,64}$";

/// What is wrong with the input: one field's value, or the body's shape (`field` then names
/// the key involved, if any).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", match .field { Some(f) => format!("{f}: {}", .message), None => .message.clone() })]
pub struct ValidationError {
    pub kind: ErrorKind,
    pub field: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A field's value is wrong (or missing, or not allowed here).
    Field,
    /// The body is not an object we can read field by field: not an object at all, or a key
    /// given twice (which most JSON parsers silently resolve to the last one).
    Body,
}

impl ValidationError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Field,
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    pub fn body(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Body,
            field: None,
            message: message.into(),
        }
    }

    pub fn duplicate_key(key: &str) -> Self {
        Self {
            kind: ErrorKind::Body,
            field: Some(key.to_string()),
            message: "appears more than once; send each field once".into(),
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
    /// Parses a JSON body from its text: an object with exactly `username`, `userId` and
    /// `price`, each key once. Values stay raw JSON text until their type is known, so
    /// `price` is checked from the digits the client wrote, never through a float.
    pub fn from_json(body: &RawValue, user_id_field: UserIdField) -> Result<Self, ValidationError> {
        let members = object_members(body)?;
        let allowed: &[&str] = match user_id_field {
            UserIdField::Current => &["username", "userId", "price"],
            UserIdField::AllowLegacy => &["username", "userId", "userid", "price"],
        };
        let mut object: HashMap<&str, &RawValue> = HashMap::new();
        for (key, value) in &members {
            if object.insert(key, value).is_some() {
                return Err(ValidationError::duplicate_key(key));
            }
        }
        if let Some((unknown, _)) = members.iter().find(|(k, _)| !allowed.contains(&k.as_ref())) {
            return Err(ValidationError::field(
                unknown,
                format!("unknown field; allowed fields are {}", allowed.join(", ")),
            ));
        }

        let username = required_string(&object, "username")?;
        let username =
            Username::parse(&username).map_err(|m| ValidationError::field("username", m))?;

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
        let user_id = required_string(&object, id_key)?;
        let user_id = UserId::parse(&user_id).map_err(|m| ValidationError::field(id_key, m))?;

        let price = match object.get("price").map(|raw| (JsonType::of(raw), raw)) {
            None | Some((JsonType::Null, _)) => {
                return Err(ValidationError::field("price", "is required"))
            }
            Some((JsonType::Number, raw)) => Price::parse_decimal(raw.get())
                .map_err(|e| ValidationError::field("price", e.to_string()))?,
            Some((other, _)) => {
                return Err(ValidationError::field(
                    "price",
                    format!("must be a number, got {other}"),
                ))
            }
        };

        Ok(Self {
            username,
            user_id,
            price,
        })
    }
}

/// The members of a JSON object in their order, values as raw text, duplicates kept so they
/// can be reported (`serde_json::Value` and derived structs keep the last one silently).
fn object_members(body: &RawValue) -> Result<Vec<(Cow<'_, str>, &RawValue)>, ValidationError> {
    struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

    /// A key borrowed from the body unless it has escapes.
    struct Key<'a>(Cow<'a, str>);

    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct KeyVisitor;
            impl<'de> Visitor<'de> for KeyVisitor {
                type Value = Key<'de>;

                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object key")
                }

                fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
                    Ok(Key(Cow::Borrowed(key)))
                }

                fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
                    Ok(Key(Cow::Owned(key.to_string())))
                }
            }
            deserializer.deserialize_str(KeyVisitor)
        }
    }

    impl<'de> Deserialize<'de> for Members<'de> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct MembersVisitor;
            impl<'de> Visitor<'de> for MembersVisitor {
                type Value = Members<'de>;

                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }

                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut members = Vec::new();
                    while let Some(Key(key)) = map.next_key::<Key>()? {
                        members.push((key, map.next_value()?));
                    }
                    Ok(Members(members))
                }
            }
            deserializer.deserialize_map(MembersVisitor)
        }
    }

    match JsonType::of(body) {
        JsonType::Object => serde_json::from_str::<Members>(body.get())
            .map(|members| members.0)
            // `body` is valid JSON already, so this only fails on a defect in this reader.
            .map_err(|e| ValidationError::body(format!("cannot read the body object: {e}"))),
        other => Err(ValidationError::body(format!(
            "body must be a JSON object, got {other}"
        ))),
    }
}

fn required_string<'a>(
    object: &HashMap<&str, &'a RawValue>,
    key: &str,
) -> Result<Cow<'a, str>, ValidationError> {
    match object.get(key) {
        None => Err(ValidationError::field(key, "is required")),
        Some(raw) => match JsonType::of(raw) {
            JsonType::Null => Err(ValidationError::field(key, "is required")),
            JsonType::String => json_string(raw.get())
                .map_err(|e| ValidationError::field(key, format!("is not a readable string: {e}"))),
            other => Err(ValidationError::field(
                key,
                format!("must be a string, got {other}"),
            )),
        },
    }
}

/// A JSON string's text: borrowed from the body when it has no escapes (the common case, no
/// allocation), unescaped into its own buffer otherwise.
fn json_string(json: &str) -> Result<Cow<'_, str>, serde_json::Error> {
    match serde_json::from_str::<&str>(json) {
        Ok(text) => Ok(Cow::Borrowed(text)),
        Err(_) => serde_json::from_str::<String>(json).map(Cow::Owned),
    }
}

/// The type of a JSON value, told by its first character (raw values are valid JSON and
/// start at the value, without whitespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Null,
    Boolean,
    Number,
    String,
    Array,
    Object,
}

impl JsonType {
    fn of(raw: &RawValue) -> Self {
        match raw.get().as_bytes().first() {
            Some(b'n') => Self::Null,
            Some(b't' | b'f') => Self::Boolean,
            Some(b'"') => Self::String,
            Some(b'[') => Self::Array,
            Some(b'{') => Self::Object,
            _ => Self::Number,
        }
    }
}

impl std::fmt::Display for JsonType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Null => "null",
            Self::Boolean => "a boolean",
            Self::Number => "a number",
            Self::String => "a string",
            Self::Array => "an array",
            Self::Object => "an object",
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn parse(text: &str, field: UserIdField) -> Result<NewPurchase, ValidationError> {
        let raw: &RawValue = serde_json::from_str(text).expect("test bodies are valid JSON");
        NewPurchase::from_json(raw, field)
    }

    fn error_of(text: &str) -> ValidationError {
        parse(text, UserIdField::Current).unwrap_err()
    }

    #[test]
    fn accepts_a_well_formed_purchase() {
        let p = parse(
            r#" {"username": "José García", "userId": "u-42", "price": 19.99} "#,
            UserIdField::Current,
        )
        .unwrap();
        assert_eq!(p.username.as_str(), "José García");
        assert_eq!(p.user_id.as_str(), "u-42");
        assert_eq!(p.price.cents(), 1999);
    }

    #[test]
    fn escaped_strings_are_read_as_their_text() {
        let p = parse(
            r#"{"username": "Zo\u00eb", "userId": "u\u002d1", "price": 1}"#,
            UserIdField::Current,
        )
        .unwrap();
        assert_eq!(p.username.as_str(), "Zoë");
        assert_eq!(p.user_id.as_str(), "u-1");
    }

    #[test]
    fn each_bad_field_is_named() {
        let ok = json!({"username": "ann", "userId": "1", "price": 1.5});
        let with = |k: &str, v: Value| {
            let mut b = ok.clone();
            b[k] = v;
            b
        };
        let cases = [
            (with("username", json!("")), "username"),
            (with("username", json!("<script>")), "username"),
            (with("username", json!(" ann")), "username"),
            (with("username", json!("a".repeat(65))), "username"),
            (with("username", json!(7)), "username"),
            (with("username", json!({"first": "ann"})), "username"),
            (with("userId", json!("a/b")), "userId"),
            (with("userId", json!(555)), "userId"),
            (with("userId", Value::Null), "userId"),
            (with("price", json!("12.00")), "price"),
            (with("price", json!(true)), "price"),
            (with("price", Value::Null), "price"),
            (with("price", json!([1])), "price"),
            (with("price", json!({"$gt": 0})), "price"),
            (with("price", json!(-1)), "price"),
            (with("price", json!(1.234)), "price"),
            (with("extra", json!(1)), "extra"),
            (json!({"username": "ann", "price": 1}), "userId"),
        ];
        for (body, field) in cases {
            let error = error_of(&body.to_string());
            assert_eq!(error.field.as_deref(), Some(field), "{body}");
            assert_eq!(error.kind, ErrorKind::Field, "{body}");
        }
    }

    #[test]
    fn price_is_checked_from_the_text_not_a_rounded_float() {
        for price in ["19.999999999999999", "0.1000000000000000055511151231257827"] {
            let error = error_of(&format!(
                r#"{{"username":"ann","userId":"u1","price":{price}}}"#
            ));
            assert_eq!(error.field.as_deref(), Some("price"), "{price}");
        }
        let p = parse(
            r#"{"username":"ann","userId":"u1","price":19.990}"#,
            UserIdField::Current,
        )
        .unwrap();
        assert_eq!(p.price.cents(), 1999);
    }

    #[test]
    fn a_key_given_twice_is_a_body_error_naming_the_key() {
        for (text, key) in [
            (
                r#"{"username":"a","userId":"x","price":1,"price":2}"#,
                "price",
            ),
            (
                r#"{"username":"a","userId":"x","userId":"y","price":1}"#,
                "userId",
            ),
            (
                r#"{"username":"a","username":"a","userId":"x","price":1}"#,
                "username",
            ),
            // The same key spelled with an escape is still the same key.
            (
                r#"{"username":"a","userId":"x","price":1,"pr\u0069ce":1}"#,
                "price",
            ),
            (r#"{"coupon":1,"coupon":2}"#, "coupon"),
        ] {
            let error = error_of(text);
            assert_eq!(error.kind, ErrorKind::Body, "{text}");
            assert_eq!(error.field.as_deref(), Some(key), "{text}");
        }
    }

    #[test]
    fn a_body_that_is_not_an_object_names_no_field() {
        for text in ["[1, 2]", "null", "7", "\"ann\"", "true", "[]"] {
            let error = error_of(text);
            assert_eq!(error.kind, ErrorKind::Body, "{text}");
            assert_eq!(error.field, None, "{text}");
        }
    }

    #[test]
    fn legacy_userid_is_accepted_only_where_allowed_and_never_beside_user_id() {
        let legacy = r#"{"username": "ann", "userid": "7", "price": 3}"#;
        assert_eq!(error_of(legacy).field.as_deref(), Some("userid"));
        let p = parse(legacy, UserIdField::AllowLegacy).unwrap();
        assert_eq!(p.user_id.as_str(), "7");
        let both = r#"{"username": "ann", "userid": "7", "userId": "7", "price": 3}"#;
        let error = parse(both, UserIdField::AllowLegacy).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("userid"));
        let twice = r#"{"username": "ann", "userid": "7", "userid": "8", "price": 3}"#;
        let error = parse(twice, UserIdField::AllowLegacy).unwrap_err();
        assert_eq!(
            (error.kind, error.field.as_deref()),
            (ErrorKind::Body, Some("userid"))
        );
    }

    /// The spec's patterns must accept exactly what the parsers accept, or schemathesis and
    /// clients that trust the spec would be refused (or send what we refuse).
    #[test]
    fn spec_patterns_agree_with_the_parsers_on_every_character() {
        let username = regex::Regex::new(USERNAME_PATTERN).unwrap();
        let user_id = regex::Regex::new(USER_ID_PATTERN).unwrap();
        // Any two Unicode versions differ on the characters the newer one assigned (Rust's
        // std may be ahead of the regex crate, as of any client's engine); those are skipped.
        let unassigned = regex::Regex::new(r"^\p{Cn}$").unwrap();
        let characters = (0..=u32::from(char::MAX)).filter_map(char::from_u32);
        for c in characters.filter(|c| !unassigned.is_match(&c.to_string())) {
            let text = c.to_string();
            assert_eq!(
                username.is_match(&text),
                Username::parse(&text).is_ok(),
                "username {c:?} U+{:04X}",
                u32::from(c)
            );
            assert_eq!(
                user_id.is_match(&text),
                UserId::parse(&text).is_ok(),
                "userId {c:?} U+{:04X}",
                u32::from(c)
            );
        }
        let within_length = |s: &str| (1..=MAX_NAME_CHARS).contains(&s.chars().count());
        for text in [
            "ann",
            "José García",
            "a b",
            "a  b",
            " a",
            "a ",
            " ",
            "",
            "O'Brien-Smith_Jr.",
            "ann\tb",
            "ann\u{2003}b",
            "a<b",
            "Zoë",
            "Ⓐnn",
            "हिंदी",
            &"é".repeat(64),
            &"é".repeat(65),
        ] {
            assert_eq!(
                username.is_match(text) && within_length(text),
                Username::parse(text).is_ok(),
                "username {text:?}"
            );
        }
        for text in [
            "u1",
            "a.b-c_d",
            "",
            &"x".repeat(64),
            &"x".repeat(65),
            "a b",
            "é",
        ] {
            assert_eq!(
                user_id.is_match(text),
                UserId::parse(text).is_ok(),
                "userId {text:?}"
            );
        }
    }
}
