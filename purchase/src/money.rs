//! Money as whole cents, so 19.99 in is 19.99 out: in JSON, in Kafka and in MongoDB.
//!
//! A price is read from its decimal text (the JSON number exactly as the client wrote it, or
//! MongoDB's Decimal128 text), never through an f64: a float rounds `19.999999999999999` to
//! `20` before any check could see the extra digits.

use std::fmt;

use serde_json::value::RawValue;

/// The largest price accepted for one purchase. A bound keeps typos like `1e12` out of the
/// books and keeps every amount exactly representable as a JSON number (an f64).
pub const MAX_PRICE_CENTS: i64 = 100_000_000; // 1,000,000.00

/// Digits of `MAX_PRICE_CENTS`: an amount with more digits of cents is too large, whatever
/// they are, so the exact value never has to be built.
const MAX_CENTS_DIGITS: i64 = MAX_PRICE_CENTS.ilog10() as i64 + 1;

/// A positive amount of money with at most two decimals, held as cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price {
    cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("must be a finite number")]
    NotFinite,
    #[error("must be greater than 0")]
    NotPositive,
    #[error("must be at most 1000000.00")]
    TooLarge,
    #[error("must have at most 2 decimal places")]
    TooManyDecimals,
    #[error("is not a decimal amount like 19.99")]
    NotDecimal,
}

impl Price {
    pub fn from_cents(cents: i64) -> Result<Self, PriceError> {
        if cents <= 0 {
            Err(PriceError::NotPositive)
        } else if cents > MAX_PRICE_CENTS {
            Err(PriceError::TooLarge)
        } else {
            Ok(Self { cents })
        }
    }

    pub fn cents(self) -> i64 {
        self.cents
    }

    /// Reads a double already stored in MongoDB (documents are written as Decimal128; this
    /// is for older ones). Its shortest round-trip text is the amount its writer meant. Never
    /// use this for client input: parse the client's text with `parse_decimal`.
    pub fn from_f64(value: f64) -> Result<Self, PriceError> {
        if !value.is_finite() {
            return Err(PriceError::NotFinite);
        }
        // Rust prints an f64 without an exponent (1e300 as 1 and 300 zeros), which
        // `parse_decimal` reads exactly.
        Self::parse_decimal(&value.to_string())
    }

    /// Parses decimal text by its exact value: a JSON number (`19.99`, `12`, `1.5e1`,
    /// `1999E-2`) or MongoDB's Decimal128 text (`19.99`, `1E+2`). The value decides, not the
    /// spelling: `19.990` and `1.999e1` are 19.99, while `19.999999999999999` has more than
    /// two decimals and is refused, as a JSON Schema `multipleOf: 0.01` would.
    pub fn parse_decimal(text: &str) -> Result<Self, PriceError> {
        let decimal = Decimal::parse(text).ok_or(PriceError::NotDecimal)?;
        // `-0` and `-0.00` are zero: not greater than 0 either.
        if decimal.negative || decimal.digits.is_empty() {
            return Err(PriceError::NotPositive);
        }
        // value = digits × 10^exponent, so cents = digits × 10^(exponent + 2); the digits
        // end in a non-zero digit, so that is a whole number only if exponent + 2 >= 0.
        let cents_exponent = decimal.exponent + 2;
        if cents_exponent < 0 {
            return Err(PriceError::TooManyDecimals);
        }
        if decimal.digits.len() as i64 + cents_exponent > MAX_CENTS_DIGITS {
            return Err(PriceError::TooLarge);
        }
        // At most MAX_CENTS_DIGITS digits: always fits an i64.
        let cents = decimal
            .digits
            .parse::<i64>()
            .ok()
            .and_then(|digits| digits.checked_mul(10_i64.checked_pow(cents_exponent as u32)?))
            .ok_or(PriceError::TooLarge)?;
        Self::from_cents(cents)
    }

    /// The nearest f64, which serializes back to the same two-decimal text.
    pub fn as_f64(self) -> f64 {
        // Dividing two exactly representable integers is correctly rounded, so this is the
        // f64 closest to the decimal amount.
        self.cents as f64 / 100.0
    }
}

/// Decimal text split into sign, significant digits and a power of ten, so that
/// value = ±digits × 10^exponent exactly. `digits` has no leading or trailing zeros (empty
/// for zero), so comparing and counting decimals needs no arithmetic on huge numbers.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    /// Accepts the JSON number grammar, `-?digits(.digits)?([eE][+-]?digits)?` (leading
    /// zeros too, which JSON itself forbids but Decimal128 text may have); nothing else.
    fn parse(text: &str) -> Option<Self> {
        let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
            Some((mantissa, exponent)) => (mantissa, Some(exponent)),
            None => (unsigned, None),
        };
        let (whole, fraction) = match mantissa.split_once('.') {
            Some((whole, fraction)) if is_digits(fraction) => (whole, fraction),
            Some(_) => return None,
            None => (mantissa, ""),
        };
        if !is_digits(whole) {
            return None;
        }
        let exponent = match exponent {
            None => 0,
            Some(e) => {
                let (sign, magnitude) = match e.strip_prefix(['+', '-']) {
                    Some(rest) => (if e.starts_with('-') { -1 } else { 1 }, rest),
                    None => (1, e),
                };
                if !is_digits(magnitude) {
                    return None;
                }
                // A body is at most a few KiB, so no mantissa has a billion digits: an
                // exponent beyond that decides the outcome alone, and clamping it keeps
                // the arithmetic below far from overflow.
                let magnitude = magnitude.trim_start_matches('0');
                let magnitude: i64 = if magnitude.len() > 9 {
                    1_000_000_000
                } else {
                    magnitude.parse().unwrap_or(0)
                };
                sign * magnitude
            }
        };
        let all = format!("{whole}{fraction}");
        let significant = all.trim_start_matches('0');
        let trimmed = significant.trim_end_matches('0');
        let exponent =
            exponent - fraction.len() as i64 + (significant.len() - trimmed.len()) as i64;
        Some(Self {
            negative,
            digits: trimmed.to_string(),
            exponent,
        })
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.cents / 100, self.cents % 100)
    }
}

impl serde::Serialize for Price {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.as_f64())
    }
}

/// Reads the number's own text through serde_json's `RawValue` (the additive `raw_value`
/// feature), so nothing is rounded on the way. A price is only ever decoded from JSON (the
/// Kafka event); MongoDB documents are mapped by hand in `document.rs`. The alternative,
/// serde_json's `arbitrary_precision`, would change how every crate in the build sees
/// numbers in `serde_json::Value` (bson, poem-openapi), so it is not used.
impl<'de> serde::Deserialize<'de> for Price {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Price::parse_decimal(raw.get()).map_err(|e| serde::de::Error::custom(format!("price {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cents(text: &str) -> Result<i64, PriceError> {
        Price::parse_decimal(text).map(Price::cents)
    }

    #[test]
    fn common_amounts_keep_their_exact_decimal_text() {
        for text in [
            "19.99",
            "0.01",
            "12",
            "12.5",
            "999999.99",
            "1000000",
            "0.1",
            "0.29",
        ] {
            let value: f64 = text.parse().unwrap();
            let price = Price::parse_decimal(text).unwrap();
            assert_eq!(price.as_f64(), value, "{text}");
            let json = serde_json::to_string(&price).unwrap();
            let expected = if text.contains('.') {
                text.to_string()
            } else {
                format!("{text}.0")
            };
            assert_eq!(json, expected);
        }
    }

    #[test]
    fn json_round_trip_is_exact_for_every_cent_below_a_thousand() {
        for cents in 1..100_000 {
            let price = Price::from_cents(cents).unwrap();
            let json = serde_json::to_string(&price).unwrap();
            let back: Price = serde_json::from_str(&json).unwrap();
            assert_eq!(back, price, "{json}");
            assert_eq!(Price::parse_decimal(&price.to_string()).unwrap(), price);
        }
    }

    #[test]
    fn digits_that_a_float_would_round_away_are_refused() {
        // Both are the f64 nearest to an amount with cents (20 and 0.1); the text is not.
        assert_eq!(
            cents("19.999999999999999"),
            Err(PriceError::TooManyDecimals)
        );
        assert_eq!(
            cents("0.1000000000000000055511151231257827"),
            Err(PriceError::TooManyDecimals)
        );
        assert_eq!(cents("19.999"), Err(PriceError::TooManyDecimals));
        assert_eq!(cents("0.001"), Err(PriceError::TooManyDecimals));
        assert_eq!(cents("1e-400"), Err(PriceError::TooManyDecimals));
        let json: Result<Price, _> = serde_json::from_str("19.999999999999999");
        assert!(json.is_err(), "deserializing reads the text too");
    }

    #[test]
    fn the_value_decides_not_the_spelling() {
        assert_eq!(cents("19.990"), Ok(1999));
        assert_eq!(cents("19.99000000000000000000"), Ok(1999));
        assert_eq!(cents("1e2"), Ok(10_000));
        assert_eq!(cents("1E+2"), Ok(10_000));
        assert_eq!(cents("1.5e1"), Ok(1500));
        assert_eq!(cents("1999e-2"), Ok(1999));
        assert_eq!(cents("0.0001999e5"), Ok(1999));
        assert_eq!(cents("1000000.00"), Ok(MAX_PRICE_CENTS));
        assert_eq!(cents("1e6"), Ok(MAX_PRICE_CENTS));
        assert_eq!(cents("007"), Ok(700));
    }

    #[test]
    fn zero_and_negative_amounts_are_not_positive() {
        for text in ["0", "-0", "0.00", "-0.0", "0e10", "-5", "-1.00", "-19.999"] {
            assert_eq!(cents(text), Err(PriceError::NotPositive), "{text}");
        }
    }

    #[test]
    fn amounts_over_a_million_are_too_large_however_written() {
        for text in [
            "1000000.01",
            "1e7",
            "1e400",
            "1e999999999999999999999",
            "12345678901234567890",
            "100000001e-2",
        ] {
            assert_eq!(cents(text), Err(PriceError::TooLarge), "{text}");
        }
    }

    #[test]
    fn text_that_is_not_a_decimal_number_is_refused() {
        for text in [
            "",
            "-",
            ".5",
            "5.",
            "1.2.3",
            "1e",
            "1e+",
            "+1",
            "\"19.99\"",
            "true",
            "null",
            "NaN",
            "Infinity",
            " 1",
            "1 ",
            "0x10",
            "1_000",
        ] {
            assert_eq!(cents(text), Err(PriceError::NotDecimal), "{text:?}");
        }
    }

    #[test]
    fn stored_doubles_read_by_their_shortest_text() {
        assert_eq!(Price::from_f64(19.99).map(Price::cents), Ok(1999));
        assert_eq!(Price::from_f64(19.999), Err(PriceError::TooManyDecimals));
        assert_eq!(Price::from_f64(1e-7), Err(PriceError::TooManyDecimals));
        assert_eq!(Price::from_f64(0.0), Err(PriceError::NotPositive));
        assert_eq!(Price::from_f64(-5.0), Err(PriceError::NotPositive));
        assert_eq!(Price::from_f64(1e300), Err(PriceError::TooLarge));
        assert_eq!(Price::from_f64(f64::NAN), Err(PriceError::NotFinite));
    }
}
