//! `cast`: casts fields of each record's JSON value (or key), or the whole of it, to another
//! type, as Kafka Connect's `Cast` does.
//!
//! Config: `spec=FIELD:TYPE|FIELD:TYPE` (dotted paths for nested fields), or `spec=TYPE` alone
//! to cast the whole value; `on=value` (default) or `on=key`. Types: `int8`, `int16`, `int32`,
//! `int64` (JSON integers), `float32`, `float64` (JSON numbers with a fraction), `boolean`,
//! `string`. As in Kafka: numbers, booleans (`1`/`0`) and strings cast to numbers, a fraction
//! is truncated toward zero; a number is true when its integer part is not zero, a string when
//! it is `true` in any case; anything casts to a string (an array or object as its JSON text).
//! Unlike Kafka, a number out of the target's range, or a string that is neither `true` nor
//! `false` cast to a boolean, is an error rather than a wrapped or false value. Null fields stay
//! null and absent fields stay absent. A tombstone, or a record without a key for `on=key`,
//! passes unchanged.

use std::fmt;

use appliance_sdk::json::{
    self,
    serde_json::{Number, Value},
};
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

use appliance_sdk::Side;

#[transform]
#[derive(Debug)]
pub struct Cast {
    side: Side,
    casts: Casts,
}

#[derive(Debug)]
enum Casts {
    WholeValue(CastType),
    Fields(Vec<(String, CastType)>),
}

#[derive(Debug, Clone, Copy)]
enum CastType {
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Boolean,
    String,
}

const KNOWN_KEYS: &[&str] = &["spec", "on"];

impl Transform for Cast {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let spec = config.list("spec");
        let casts = match spec.as_slice() {
            [] => {
                return Err(
                    "missing required key `spec` (FIELD:TYPE pairs separated by `|`, \
                     or one TYPE for the whole value)"
                        .to_owned(),
                );
            }
            [whole] if !whole.contains(':') => Casts::WholeValue(CastType::parse(whole)?),
            pairs => Casts::Fields(
                pairs
                    .iter()
                    .map(|pair| match pair.split_once(':') {
                        Some((field, type_name)) if !field.trim().is_empty() => {
                            Ok((field.trim().to_owned(), CastType::parse(type_name)?))
                        }
                        _ => Err(format!(
                            "`spec` takes FIELD:TYPE pairs (or one TYPE for the whole value), \
                             not {pair:?}"
                        )),
                    })
                    .collect::<Result<_, String>>()?,
            ),
        };
        Ok(Self {
            side: Side::from_config(&config)?,
            casts,
        })
    }

    fn apply(&mut self, _: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let Some(mut target) = self.side.read(&record)? else {
            return Ok(Some(record));
        };
        match &self.casts {
            Casts::WholeValue(cast_type) => {
                target = cast_type
                    .cast(&target)
                    .map_err(|e| format!("cannot cast the {} to {cast_type}: {e}", self.side))?;
            }
            Casts::Fields(fields) => {
                if !target.is_object() {
                    return Err(format!("the {} is not a JSON object", self.side));
                }
                for (path, cast_type) in fields {
                    if let Some(field) = json::get_mut(&mut target, path) {
                        *field = cast_type
                            .cast(field)
                            .map_err(|e| format!("cannot cast `{path}` to {cast_type}: {e}"))?;
                    }
                }
            }
        }
        self.side.write(&mut record, &target);
        Ok(Some(record))
    }
}

impl CastType {
    const ALL: [Self; 8] = [
        Self::Int8,
        Self::Int16,
        Self::Int32,
        Self::Int64,
        Self::Float32,
        Self::Float64,
        Self::Boolean,
        Self::String,
    ];

    fn parse(name: &str) -> Result<Self, String> {
        let name = name.trim();
        Self::ALL
            .into_iter()
            .find(|cast_type| cast_type.to_string().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                format!(
                    "`spec`: unknown type {name:?}; the types are int8, int16, int32, int64, \
                     float32, float64, boolean, string"
                )
            })
    }

    fn cast(self, value: &Value) -> Result<Value, String> {
        if value.is_null() {
            return Ok(Value::Null);
        }
        match self {
            Self::Int8 => self.integer(value, i8::MIN.into(), i8::MAX.into()),
            Self::Int16 => self.integer(value, i16::MIN.into(), i16::MAX.into()),
            Self::Int32 => self.integer(value, i32::MIN.into(), i32::MAX.into()),
            Self::Int64 => self.integer(value, i64::MIN, i64::MAX),
            Self::Float32 => {
                let narrowed = float(value)? as f32;
                if !narrowed.is_finite() {
                    return Err(format!("{value} is out of range for float32"));
                }
                // The shortest decimal that reads back as the same float32, so that 1.1 stays
                // 1.1 in JSON instead of the float32's exact value 1.100000023841858.
                let shortest = narrowed.to_string().parse().unwrap_or(f64::from(narrowed));
                Ok(Value::from(shortest))
            }
            Self::Float64 => Ok(Value::from(float(value)?)),
            Self::Boolean => boolean(value).map(Value::Bool),
            Self::String => Ok(Value::String(json::to_plain_string(value))),
        }
    }

    fn integer(self, value: &Value, min: i64, max: i64) -> Result<Value, String> {
        let whole: i128 = match value {
            Value::Bool(b) => i128::from(*b),
            Value::Number(number) => integer_part(number),
            Value::String(text) => text
                .parse()
                .map_err(|_| format!("{text:?} is not an integer"))?,
            _ => return Err(complex_error(value)),
        };
        i64::try_from(whole)
            .ok()
            .filter(|n| (min..=max).contains(n))
            .map(Value::from)
            .ok_or_else(|| format!("{value} is out of range for {self}"))
    }
}

impl fmt::Display for CastType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Int8 => "int8",
            Self::Int16 => "int16",
            Self::Int32 => "int32",
            Self::Int64 => "int64",
            Self::Float32 => "float32",
            Self::Float64 => "float64",
            Self::Boolean => "boolean",
            Self::String => "string",
        })
    }
}

/// A number's integer part, as Java's `Number.longValue()` takes it but without wrapping: a
/// float beyond any integer saturates, and the caller's range check rejects it.
fn integer_part(number: &Number) -> i128 {
    if let Some(signed) = number.as_i64() {
        signed.into()
    } else if let Some(unsigned) = number.as_u64() {
        unsigned.into()
    } else {
        number.as_f64().unwrap_or_default().trunc() as i128
    }
}

fn float(value: &Value) -> Result<f64, String> {
    let float = match value {
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(number) => number.as_f64().unwrap_or_default(),
        Value::String(text) => text
            .parse()
            .map_err(|_| format!("{text:?} is not a number"))?,
        _ => return Err(complex_error(value)),
    };
    if float.is_finite() {
        Ok(float)
    } else {
        Err(format!("{value} is not a finite number"))
    }
}

fn boolean(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(number) => Ok(integer_part(number) != 0),
        Value::String(text) if text.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(text) if text.eq_ignore_ascii_case("false") => Ok(false),
        Value::String(text) => Err(format!("{text:?} is neither true nor false")),
        _ => Err(complex_error(value)),
    }
}

fn complex_error(value: &Value) -> String {
    let kind = if value.is_array() {
        "an array"
    } else {
        "an object"
    };
    format!("{kind} casts only to string")
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_sdk::json::serde_json::json;

    fn cast(config: &[(&str, &str)], value: Value) -> Result<Value, String> {
        appliance_sdk::testing::apply_to_json::<Cast>(config, &value)
    }

    fn cast_one(type_name: &str, value: Value) -> Result<Value, String> {
        cast(&[("spec", type_name)], value)
    }

    #[test]
    fn fields_are_cast_in_place() {
        let value = json!({"id": "42", "t": {"c": 21.7}, "ok": 1, "n": null, "tags": ["a"]});
        assert_eq!(
            cast(
                &[(
                    "spec",
                    "id:int64|t.c:int32|ok:boolean|n:string|tags:string|absent:int8"
                )],
                value
            ),
            Ok(json!({"id": 42, "t": {"c": 21}, "ok": true, "n": null, "tags": "[\"a\"]"}))
        );
    }

    #[test]
    fn integers_truncate_and_check_their_range() {
        assert_eq!(cast_one("int8", json!(-2.9)), Ok(json!(-2)));
        assert_eq!(cast_one("int16", json!(true)), Ok(json!(1)));
        assert_eq!(cast_one("INT32", json!("-7")), Ok(json!(-7)));
        assert!(
            cast_one("int64", json!(u64::MAX))
                .expect_err("too big")
                .contains("out of range for int64")
        );
        assert_eq!(
            cast_one("int8", json!(300)),
            Err("cannot cast the value to int8: 300 is out of range for int8".to_owned())
        );
        assert_eq!(
            cast_one("int32", json!("1.5")),
            Err("cannot cast the value to int32: \"1.5\" is not an integer".to_owned())
        );
        assert_eq!(
            cast_one("int32", json!({"a": 1})),
            Err("cannot cast the value to int32: an object casts only to string".to_owned())
        );
    }

    #[test]
    fn floats_booleans_and_strings() {
        assert_eq!(cast_one("float64", json!(3)), Ok(json!(3.0)));
        assert_eq!(cast_one("float64", json!("2.5e3")), Ok(json!(2500.0)));
        assert_eq!(cast_one("float32", json!(1.1)), Ok(json!(1.1)));
        assert_eq!(
            cast_one("float32", json!(16_777_217)),
            Ok(json!(16_777_216.0))
        );
        assert!(cast_one("float32", json!(1e300)).is_err());
        assert!(cast_one("float64", json!("NaN")).is_err());
        assert_eq!(cast_one("boolean", json!(0.5)), Ok(json!(false)));
        assert_eq!(cast_one("boolean", json!(-3)), Ok(json!(true)));
        assert_eq!(cast_one("boolean", json!("TRUE")), Ok(json!(true)));
        assert!(cast_one("boolean", json!("yes")).is_err());
        assert_eq!(cast_one("string", json!(1.0)), Ok(json!("1.0")));
        assert_eq!(cast_one("string", json!(false)), Ok(json!("false")));
        assert_eq!(cast_one("string", json!("as is")), Ok(json!("as is")));
        assert_eq!(cast_one("string", json!(null)), Ok(json!(null)));
    }

    #[test]
    fn key_side_tombstones_and_config_errors() {
        let info = BatchInfo::new("t", 0);
        let mut on_key = Cast::init([("spec", "string"), ("on", "key")].into_iter().collect())
            .expect("valid config");
        let mut tombstone = Record::from_value("");
        tombstone.value = None;
        tombstone.key = Some(b"17".to_vec());
        let out = on_key
            .apply(&info, tombstone)
            .expect("applies")
            .expect("kept");
        assert_eq!(out.json_key(), Ok(Some(json!("17"))));
        assert_eq!(out.value, None);

        assert_eq!(
            cast(&[("spec", "a:int8")], json!([1])),
            Err("the value is not a JSON object".to_owned())
        );
        let rejected = |config: &[(&str, &str)]| {
            Cast::init(config.iter().copied().collect()).expect_err("rejected")
        };
        assert!(rejected(&[]).contains("missing required key `spec`"));
        assert!(rejected(&[("spec", "a:int128")]).contains("unknown type \"int128\""));
        assert!(rejected(&[("spec", "int8|a:string")]).contains("FIELD:TYPE pairs"));
        assert!(rejected(&[("spec", ":int8")]).contains("FIELD:TYPE pairs"));
    }
}
