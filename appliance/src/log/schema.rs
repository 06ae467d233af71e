//! A topic's declared value schema (`appliance topic create --schema FILE`): what queries
//! take as the columns of the JSON values instead of inferring them from a sample.
//!
//! Two notations are accepted, both JSON:
//! - a JSON Schema object: `{"type": "object", "properties": {"temp": {"type": "number"},
//!   "at": {"type": "string", "format": "date-time"}}, "required": ["temp"]}`;
//! - a list of Arrow-style fields: `[{"name": "temp", "type": "Float64", "nullable": false}]`.

/// A column type of a declared value field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Int,
    Float,
    Bool,
    /// Epoch milliseconds, or RFC 3339 text.
    Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredField {
    pub name: String,
    pub field_type: FieldType,
    pub nullable: bool,
}

/// The fields of a declared schema, or what is wrong with it.
pub fn parse_schema(text: &str) -> Result<Vec<DeclaredField>, String> {
    let document: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the schema is not JSON: {e}"))?;
    let fields = match &document {
        serde_json::Value::Object(object) => json_schema(object)?,
        serde_json::Value::Array(list) => field_list(list)?,
        _ => return Err("use a JSON Schema object or a list of {name, type} fields".into()),
    };
    if fields.is_empty() {
        return Err("the schema declares no field".into());
    }
    let mut names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("the field {:?} is declared twice", pair[0]));
    }
    Ok(fields)
}

fn json_schema(
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<DeclaredField>, String> {
    let properties = object
        .get("properties")
        .and_then(serde_json::Value::as_object)
        .ok_or("a JSON Schema needs \"properties\"")?;
    let required: Vec<&str> = object
        .get("required")
        .and_then(serde_json::Value::as_array)
        .map(|list| list.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    properties
        .iter()
        .map(|(name, property)| {
            let kind = property.get("type").and_then(serde_json::Value::as_str);
            let format = property.get("format").and_then(serde_json::Value::as_str);
            let field_type = match (kind, format) {
                (Some("string"), Some("date-time")) => FieldType::Timestamp,
                (Some("string"), _) => FieldType::String,
                (Some("integer"), _) => FieldType::Int,
                (Some("number"), _) => FieldType::Float,
                (Some("boolean"), _) => FieldType::Bool,
                _ => {
                    return Err(format!(
                        "property {name:?}: use type string, integer, number or boolean"
                    ));
                }
            };
            Ok(DeclaredField {
                name: name.clone(),
                field_type,
                nullable: !required.contains(&name.as_str()),
            })
        })
        .collect()
}

fn field_list(list: &[serde_json::Value]) -> Result<Vec<DeclaredField>, String> {
    list.iter()
        .enumerate()
        .map(|(i, field)| {
            let name = field
                .get("name")
                .and_then(serde_json::Value::as_str)
                .filter(|name| !name.is_empty())
                .ok_or_else(|| format!("field {i}: a \"name\" is required"))?;
            let kind = field
                .get("type")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            let field_type = match kind.to_ascii_lowercase().as_str() {
                "utf8" | "string" | "largeutf8" => FieldType::String,
                "int8" | "int16" | "int32" | "int64" | "uint8" | "uint16" | "uint32"
                | "uint64" | "integer" => FieldType::Int,
                "float16" | "float32" | "float64" | "double" | "float" => FieldType::Float,
                "boolean" | "bool" => FieldType::Bool,
                "timestamp" => FieldType::Timestamp,
                _ => {
                    return Err(format!(
                        "field {name:?}: type {kind:?}; use Utf8, Int64, Float64, Boolean or Timestamp"
                    ));
                }
            };
            Ok(DeclaredField {
                name: name.to_owned(),
                field_type,
                nullable: field
                    .get("nullable")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(true),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_notations_declare_the_same_fields() {
        let json_schema = r#"{"type": "object", "required": ["temp"], "properties": {
            "temp": {"type": "number"}, "site": {"type": "string"},
            "at": {"type": "string", "format": "date-time"}, "n": {"type": "integer"},
            "ok": {"type": "boolean"}}}"#;
        let list = r#"[{"name": "at", "type": "Timestamp"}, {"name": "n", "type": "Int64"},
            {"name": "ok", "type": "Boolean"}, {"name": "site", "type": "Utf8"},
            {"name": "temp", "type": "Float64", "nullable": false}]"#;
        assert_eq!(parse_schema(json_schema), parse_schema(list));
        let fields = parse_schema(list).unwrap();
        assert_eq!(fields[4].field_type, FieldType::Float);
        assert!(!fields[4].nullable && fields[0].nullable);
    }

    #[test]
    fn bad_schemas_say_what_is_wrong() {
        for (schema, says) in [
            ("not json", "not JSON"),
            ("42", "JSON Schema object"),
            ("[]", "no field"),
            (r#"{"properties": {"x": {"type": "array"}}}"#, "\"x\""),
            (r#"[{"type": "Utf8"}]"#, "\"name\""),
            (r#"[{"name": "x", "type": "Decimal"}]"#, "Decimal"),
            (
                r#"[{"name": "x", "type": "Utf8"}, {"name": "x", "type": "Int64"}]"#,
                "twice",
            ),
        ] {
            let error = parse_schema(schema).unwrap_err();
            assert!(error.contains(says), "{schema}: {error}");
        }
    }
}
