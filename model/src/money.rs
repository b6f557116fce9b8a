//! Money as integer minor units (cents, kopecks): never a binary float.
//!
//! In the journal and snapshots (the codec's formats are not human-readable) a [`Money`] is its
//! `i64` of minor units. In JSON (human-readable) it is a decimal **string** with two fraction
//! digits, `"1234.50"`, which is how the seed contracts' `decimal` fields are published. JSON
//! input also accepts a number with at most two fraction digits.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// An amount in minor units (1/100 of the currency unit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

/// ISO 4217 currencies the domain knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Currency {
    USD,
    EUR,
    RUB,
}

impl Currency {
    pub fn code(self) -> &'static str {
        match self {
            Currency::USD => "USD",
            Currency::EUR => "EUR",
            Currency::RUB => "RUB",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a money amount with at most two fraction digits: {0:?}")]
pub struct MoneyParseError(pub String);

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_minor(minor: i64) -> Self {
        Money(minor)
    }
    /// Whole units: `Money::from_major(50_000)` is 50,000.00.
    pub const fn from_major(major: i64) -> Self {
        Money(major * 100)
    }
    pub const fn minor(self) -> i64 {
        self.0
    }
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }
    pub fn checked_mul(self, factor: i64) -> Option<Money> {
        self.0.checked_mul(factor).map(Money)
    }
    pub fn is_positive(self) -> bool {
        self.0 > 0
    }
    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Parses `"12"`, `"12.5"`, `"12.50"`, `"-3.01"`; refuses more than two fraction digits.
    pub fn parse(text: &str) -> Result<Money, MoneyParseError> {
        let err = || MoneyParseError(text.to_owned());
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, frac) = match digits.split_once('.') {
            Some((w, f)) => (w, f),
            None => (digits, ""),
        };
        if whole.is_empty()
            || frac.len() > 2
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(err());
        }
        let whole: i64 = whole.parse().map_err(|_| err())?;
        let frac_minor: i64 = match frac.len() {
            0 => 0,
            1 => frac.parse::<i64>().map_err(|_| err())? * 10,
            _ => frac.parse().map_err(|_| err())?,
        };
        let minor = whole
            .checked_mul(100)
            .and_then(|m| m.checked_add(frac_minor))
            .ok_or_else(err)?;
        Ok(Money(if negative { -minor } else { minor }))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl std::ops::Add for Money {
    type Output = Money;
    /// Panics on overflow: amounts are validated far below `i64::MAX` minor units.
    fn add(self, rhs: Money) -> Money {
        self.checked_add(rhs).expect("money overflow")
    }
}

impl std::ops::Sub for Money {
    type Output = Money;
    fn sub(self, rhs: Money) -> Money {
        self.checked_sub(rhs).expect("money overflow")
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, |a, b| a + b)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        if !deserializer.is_human_readable() {
            return i64::deserialize(deserializer).map(Money);
        }
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal string or number with at most two fraction digits")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Money, E> {
                Money::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
                v.checked_mul(100)
                    .map(Money)
                    .ok_or_else(|| E::custom("money overflow"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
                i64::try_from(v)
                    .map_err(E::custom)
                    .and_then(|v| self.visit_i64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Money, E> {
                // A JSON number like 12.5: go through its shortest decimal text, so that
                // 0.1 + 0.2 style binary noise can never become a cent.
                Money::parse(&format!("{v}")).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_two_fraction_digits() {
        assert_eq!(Money::parse("12").unwrap(), Money::from_minor(1200));
        assert_eq!(Money::parse("12.5").unwrap(), Money::from_minor(1250));
        assert_eq!(Money::parse("-0.07").unwrap(), Money::from_minor(-7));
        assert!(Money::parse("1.234").is_err());
        assert!(Money::parse("abc").is_err());
        assert!(Money::parse(".5").is_err());
        assert_eq!(Money::from_minor(-7).to_string(), "-0.07");
        assert_eq!(Money::from_major(50_000).to_string(), "50000.00");
    }

    #[test]
    fn json_is_a_decimal_string_and_binary_is_minor_units() {
        let m = Money::from_minor(123_456);
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"1234.56\"");
        assert_eq!(serde_json::from_str::<Money>("1234.56").unwrap(), m);
        assert_eq!(serde_json::from_str::<Money>("\"1234.56\"").unwrap(), m);
        // Format 1 (bincode): the fixed-width i64.
        let bytes = crate::codec::encode_compact(&m);
        assert_eq!(bytes.len(), 1 + 8);
        assert_eq!(crate::codec::decode::<Money>(&bytes).unwrap(), m);
        // Format 2 (MessagePack, not human-readable either): the integer in its smallest
        // MessagePack form, here 0xce = uint32.
        let bytes = crate::codec::encode(&m);
        assert_eq!(
            bytes,
            [crate::codec::CODEC_FORMAT_V2, 0xce, 0, 1, 0xe2, 0x40]
        );
        assert_eq!(crate::codec::decode::<Money>(&bytes).unwrap(), m);
    }
}
