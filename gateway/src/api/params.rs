//! Path and query parameters as domain types. Each one parses with the domain's own rule
//! (`UserId::parse`, `Username::parse`) and describes that rule in the spec, so the spec
//! cannot promise more or less than the server takes. A refusal is a `ParseParamError`
//! naming the parameter, which `api::render::render_error` turns into our JSON error.

use std::borrow::Cow;

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromParameter, ParseResult, Type},
};
use purchase::{
    validation::{MAX_NAME_CHARS, MAX_USER_ID_CHARS, USERNAME_PATTERN, USER_ID_PATTERN},
    UserId, Username,
};
use uuid::Uuid;

/// Implements `Type` for a parameter wrapper (with the `impl` generics in brackets): a
/// required value whose schema is `$schema`. `$name` is how poem-openapi's parse errors call
/// the value (`failed to parse "limit": ...`); the schema is inline, so it names nothing else.
macro_rules! parameter_type {
    ([$($generics:tt)*] $ty:ty, $name:expr, $schema:expr) => {
        impl<$($generics)*> Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                $name.into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new($schema))
            }

            fn as_raw_value(&self) -> Option<&Self> {
                Some(self)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }
    };
}

/// A `userId` in a path or query.
pub struct UserIdParam(pub UserId);

parameter_type!(
    [] UserIdParam,
    "userId",
    MetaSchema {
        min_length: Some(1),
        max_length: Some(MAX_USER_ID_CHARS),
        pattern: Some(USER_ID_PATTERN.to_string()),
        example: Some("u1".into()),
        ..MetaSchema::new("string")
    }
);

impl ParseFromParameter for UserIdParam {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        UserId::parse(value).map(Self).map_err(ParseError::custom)
    }

    /// A required query parameter that is absent (`?userId[$gt]=` is not `userId`) says so
    /// plainly, instead of poem-openapi's message naming our type.
    fn parse_from_parameters<I: IntoIterator<Item = A>, A: AsRef<str>>(
        values: I,
    ) -> ParseResult<Self> {
        match values.into_iter().next() {
            Some(value) => Self::parse_from_parameter(value.as_ref()),
            None => Err(ParseError::custom("is required")),
        }
    }
}

/// A username in a path.
pub struct UsernameParam(pub Username);

parameter_type!(
    [] UsernameParam,
    "username",
    MetaSchema {
        min_length: Some(1),
        max_length: Some(MAX_NAME_CHARS),
        pattern: Some(USERNAME_PATTERN.to_string()),
        example: Some("ann".into()),
        ..MetaSchema::new("string")
    }
);

impl ParseFromParameter for UsernameParam {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Username::parse(value).map(Self).map_err(ParseError::custom)
    }
}

/// A UUID (`eventId`, `cursor`) in the standard 8-4-4-4-12 form that `format: uuid` means.
pub struct UuidParam(pub Uuid);

parameter_type!(
    [] UuidParam,
    "uuid",
    MetaSchema::new_with_format("string", "uuid")
);

impl ParseFromParameter for UuidParam {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        // `Uuid::try_parse` also takes the braced, URN and 32-digit forms, which the spec's
        // `format: uuid` does not; the length leaves only the hyphenated one.
        match Uuid::try_parse(value) {
            Ok(id) if value.len() == 36 => Ok(Self(id)),
            _ => Err(ParseError::custom(
                "must be a UUID: 8-4-4-4-12 hex digits, e.g. 0190f5a4-7b7e-7c3e-8a9b-3c4d5e6f7a8b",
            )),
        }
    }
}

/// `limit`: how many purchases a page holds, 1 to `MAX`, `DEFAULT` when absent.
pub struct PageLimit<const DEFAULT: u32, const MAX: u32>(u32);

impl<const DEFAULT: u32, const MAX: u32> PageLimit<DEFAULT, MAX> {
    pub fn or_default(limit: Option<Self>) -> u32 {
        limit.map_or(DEFAULT, |l| l.0)
    }
}

parameter_type!(
    [const DEFAULT: u32, const MAX: u32] PageLimit<DEFAULT, MAX>,
    "limit",
    MetaSchema {
        minimum: Some(1.0),
        maximum: Some(f64::from(MAX)),
        default: Some(DEFAULT.into()),
        ..MetaSchema::new_with_format("integer", "int32")
    }
);

impl<const DEFAULT: u32, const MAX: u32> ParseFromParameter for PageLimit<DEFAULT, MAX> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        match value.parse::<u32>() {
            Ok(n) if (1..=MAX).contains(&n) => Ok(Self(n)),
            _ => Err(ParseError::custom(format!(
                "must be a whole number from 1 to {MAX}"
            ))),
        }
    }
}
