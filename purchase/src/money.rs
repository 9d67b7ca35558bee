//! Money as whole cents, so 19.99 in is 19.99 out: in JSON, in Kafka and in MongoDB.

use std::fmt;

/// The largest price accepted for one purchase. A bound keeps typos like `1e12` out of the
/// books and keeps every amount exactly representable as a JSON number (an f64).
pub const MAX_PRICE_CENTS: i64 = 100_000_000; // 1,000,000.00

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

    /// Reads a JSON number. The shortest decimal text that round-trips the f64 is exactly
    /// what the client wrote (for amounts within our bound), so counting its decimals tells
    /// whether the client sent more than cents.
    pub fn from_f64(value: f64) -> Result<Self, PriceError> {
        if !value.is_finite() {
            return Err(PriceError::NotFinite);
        }
        if value <= 0.0 {
            return Err(PriceError::NotPositive);
        }
        if value > (MAX_PRICE_CENTS / 100) as f64 {
            return Err(PriceError::TooLarge);
        }
        Self::parse_decimal(&value.to_string())
    }

    /// Parses plain decimal text such as `19.99`, `12` or `12.5` (what MongoDB's Decimal128
    /// and our own `Display` produce).
    pub fn parse_decimal(text: &str) -> Result<Self, PriceError> {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if text.starts_with('-') {
            return Err(PriceError::NotPositive);
        }
        if !digits(whole) || !(fraction.is_empty() || digits(fraction)) {
            return Err(PriceError::NotDecimal);
        }
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > 2 {
            return Err(PriceError::TooManyDecimals);
        }
        if whole.len() > 12 {
            return Err(PriceError::TooLarge);
        }
        let whole: i64 = whole.parse().map_err(|_| PriceError::NotDecimal)?;
        let fraction_cents: i64 = format!("{fraction:0<2}")
            .parse()
            .map_err(|_| PriceError::NotDecimal)?;
        Self::from_cents(whole * 100 + fraction_cents)
    }

    /// The nearest f64, which serializes back to the same two-decimal text.
    pub fn as_f64(self) -> f64 {
        // Dividing two exactly representable integers is correctly rounded, so this is the
        // f64 closest to the decimal amount.
        self.cents as f64 / 100.0
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

impl<'de> serde::Deserialize<'de> for Price {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        Price::from_f64(value).map_err(|e| serde::de::Error::custom(format!("price {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let price = Price::from_f64(value).unwrap();
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
    fn rejects_more_than_two_decimals_non_positive_and_too_large() {
        assert_eq!(Price::from_f64(19.999), Err(PriceError::TooManyDecimals));
        assert_eq!(Price::from_f64(0.001), Err(PriceError::TooManyDecimals));
        assert_eq!(Price::from_f64(1e-7), Err(PriceError::TooManyDecimals));
        assert_eq!(Price::from_f64(0.0), Err(PriceError::NotPositive));
        assert_eq!(Price::from_f64(-5.0), Err(PriceError::NotPositive));
        assert_eq!(Price::from_f64(1_000_000.01), Err(PriceError::TooLarge));
        assert_eq!(Price::from_f64(1e300), Err(PriceError::TooLarge));
        assert_eq!(Price::from_f64(f64::NAN), Err(PriceError::NotFinite));
    }

    #[test]
    fn parses_decimal128_style_text() {
        assert_eq!(Price::parse_decimal("19.99").unwrap().cents(), 1999);
        assert_eq!(Price::parse_decimal("19.990").unwrap().cents(), 1999);
        assert_eq!(Price::parse_decimal("7").unwrap().cents(), 700);
        assert_eq!(Price::parse_decimal("1E+2"), Err(PriceError::NotDecimal));
        assert_eq!(Price::parse_decimal("-1.00"), Err(PriceError::NotPositive));
    }
}
